//! `POST /api/models` as `multipart/form-data`: the model's `name`, and `photos` (one field
//! per photo) or one `archive`. Read whole before anything is debited, within
//! [`MAX_UPLOAD_BYTES`](crate::api::photos::MAX_UPLOAD_BYTES) (`413` beyond), a few uploads at
//! a time so that memory stays bounded.

use std::sync::OnceLock;

use bytes::Bytes;
use futures_util::TryStreamExt;
use http_body_util::BodyStream;
use hyper::Request;
use hyper::body::Incoming;
use hyper::header;
use tokio::sync::Semaphore;

use crate::api::error::JobsError;
use crate::api::photos::{MAX_PHOTOS, MAX_UPLOAD_BYTES, Photo, TrainingUpload};

/// Uploads read at once: each may hold up to 100 MB.
const UPLOADS_AT_ONCE: usize = 4;

/// A training form, read.
pub struct TrainingForm {
    pub name: String,
    pub upload: TrainingUpload,
}

/// Whether the request is a multipart form (otherwise the JSON form of the call).
pub fn is_multipart(request: &Request<Incoming>) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"))
}

/// Reads the form: `413` over the limits, `400` for a form that is not one.
pub async fn read_training_form(request: Request<Incoming>) -> Result<TrainingForm, JobsError> {
    static PERMITS: OnceLock<Semaphore> = OnceLock::new();
    let _permit = PERMITS
        .get_or_init(|| Semaphore::new(UPLOADS_AT_ONCE))
        .acquire()
        .await
        .expect("never closed");
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let boundary = multer::parse_boundary(&content_type)
        .map_err(|err| JobsError::Invalid(format!("not a multipart form: {err}")))?;
    let chunks = BodyStream::new(request.into_body())
        .try_filter_map(|frame| async move { Ok(frame.into_data().ok()) });
    let constraints = multer::Constraints::new()
        .allowed_fields(vec!["name", "photos", "archive"])
        .size_limit(multer::SizeLimit::new().whole_stream(MAX_UPLOAD_BYTES));
    let mut form = multer::Multipart::with_constraints(chunks, boundary, constraints);
    let mut name = String::new();
    let mut photos = Vec::new();
    let mut archive: Option<Bytes> = None;
    while let Some(field) = form.next_field().await.map_err(form_error)? {
        match field.name().unwrap_or_default() {
            "name" => name = field.text().await.map_err(form_error)?,
            "photos" => {
                if photos.len() == MAX_PHOTOS {
                    return Err(JobsError::TooLarge(format!(
                        "more than {MAX_PHOTOS} photos; a training takes at most {MAX_PHOTOS}"
                    )));
                }
                let file_name = field.file_name().unwrap_or("a photo").to_owned();
                let bytes = field.bytes().await.map_err(form_error)?;
                photos.push(Photo {
                    name: file_name,
                    bytes,
                });
            }
            _ => archive = Some(field.bytes().await.map_err(form_error)?),
        }
    }
    let upload = match (archive, photos.is_empty()) {
        (Some(archive), true) => TrainingUpload::Archive(archive),
        (None, _) => TrainingUpload::Photos(photos),
        (Some(_), false) => {
            return Err(JobsError::Invalid(
                "send photos or one zip file, not both".into(),
            ));
        }
    };
    Ok(TrainingForm { name, upload })
}

fn form_error(err: multer::Error) -> JobsError {
    match err {
        multer::Error::StreamSizeExceeded { .. } | multer::Error::FieldSizeExceeded { .. } => {
            JobsError::TooLarge(format!(
                "the upload is over {} MB; send fewer or smaller photos",
                MAX_UPLOAD_BYTES / (1024 * 1024)
            ))
        }
        other => JobsError::Invalid(format!("the form cannot be read: {other}")),
    }
}
