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
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > MAX_UPLOAD_BYTES) {
        // Said too large up front: read and drop what the client is sending (up to a bound)
        // so that it is there to read the 413 instead of a reset connection.
        discard(request.into_body(), 2 * MAX_UPLOAD_BYTES).await;
        return Err(too_large());
    }
    let chunks = BodyStream::new(request.into_body())
        .try_filter_map(|frame| async move { Ok(frame.into_data().ok()) });
    let constraints = multer::Constraints::new()
        .allowed_fields(vec!["name", "photos", "archive"])
        .size_limit(multer::SizeLimit::new().whole_stream(MAX_UPLOAD_BYTES));
    let mut form = multer::Multipart::with_constraints(chunks, boundary, constraints);
    let mut name = String::new();
    let mut photos = Vec::new();
    let mut photos_sent = 0usize;
    let mut archive: Option<Bytes> = None;
    while let Some(field) = form.next_field().await.map_err(form_error)? {
        match field.name().unwrap_or_default() {
            "name" => name = field.text().await.map_err(form_error)?,
            "photos" => {
                let file_name = field.file_name().unwrap_or("a photo").to_owned();
                let bytes = field.bytes().await.map_err(form_error)?;
                // Past the most a training takes, photos are only counted: the form is read
                // to its end either way, so the client reads the answer.
                photos_sent += 1;
                if photos.len() < MAX_PHOTOS {
                    photos.push(Photo {
                        name: file_name,
                        bytes,
                    });
                }
            }
            _ => archive = Some(field.bytes().await.map_err(form_error)?),
        }
    }
    if photos_sent > MAX_PHOTOS {
        return Err(JobsError::TooLarge(format!(
            "{photos_sent} photos; a training takes at most {MAX_PHOTOS}"
        )));
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
            too_large()
        }
        other => JobsError::Invalid(format!("the form cannot be read: {other}")),
    }
}

fn too_large() -> JobsError {
    JobsError::TooLarge(format!(
        "the upload is over {} MB; send fewer or smaller photos",
        MAX_UPLOAD_BYTES / (1024 * 1024)
    ))
}

/// Reads and drops a body, at most `most` bytes of it.
async fn discard(body: Incoming, most: u64) {
    let mut frames = BodyStream::new(body);
    let mut read = 0u64;
    while read < most {
        match frames.try_next().await {
            Ok(Some(frame)) => read += frame.data_ref().map_or(0, |data| data.len() as u64),
            _ => break,
        }
    }
}
