//! Training photos from a person's device: each checked to be a JPEG, PNG or WebP by its
//! first bytes, at most [`MAX_PHOTOS`] and [`MAX_UPLOAD_BYTES`] in all, put in a zip (stored,
//! not compressed again) for Replicate's files API; or a zip the person made, checked to be
//! one.

use std::io::{Cursor, Write};

use bytes::Bytes;

use crate::api::error::JobsError;

/// The most a training upload may carry, all files together.
pub const MAX_UPLOAD_BYTES: u64 = 100 * 1024 * 1024;
/// The most photos one training takes.
pub const MAX_PHOTOS: usize = 50;

/// What a training form brought.
#[derive(Debug, Clone)]
pub enum TrainingUpload {
    Photos(Vec<Photo>),
    Archive(Bytes),
}

#[derive(Debug, Clone)]
pub struct Photo {
    /// The file name the browser gave, for the reason in an error.
    pub name: String,
    pub bytes: Bytes,
}

/// The image format of `bytes` by its magic number: only what trainers take.
pub fn image_extension(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("jpg")
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("png")
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some("webp")
    } else {
        None
    }
}

/// The zip Replicate's trainer takes: the photos checked, or the person's archive checked.
pub fn training_zip(upload: &TrainingUpload) -> Result<Bytes, JobsError> {
    match upload {
        TrainingUpload::Archive(bytes) => {
            let archive = zip::ZipArchive::new(Cursor::new(bytes.as_ref())).map_err(|err| {
                JobsError::Invalid(format!("the archive is not a zip file ({err})"))
            })?;
            if archive.is_empty() {
                return Err(JobsError::Invalid("the zip file is empty".into()));
            }
            Ok(bytes.clone())
        }
        TrainingUpload::Photos(photos) => {
            if photos.is_empty() {
                return Err(JobsError::Invalid(
                    "add your photos (JPEG, PNG or WebP), or a zip of them".into(),
                ));
            }
            if photos.len() > MAX_PHOTOS {
                return Err(JobsError::TooLarge(format!(
                    "{} photos; a training takes at most {MAX_PHOTOS}",
                    photos.len()
                )));
            }
            let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
            let stored = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Stored);
            for (index, photo) in photos.iter().enumerate() {
                let Some(extension) = image_extension(&photo.bytes) else {
                    return Err(JobsError::Invalid(format!(
                        "{:?} is not a JPEG, PNG or WebP photo",
                        photo.name
                    )));
                };
                let written = zip
                    .start_file(format!("photo-{:02}.{extension}", index + 1), stored)
                    .and_then(|()| zip.write_all(&photo.bytes).map_err(Into::into));
                written.map_err(|err| {
                    JobsError::Invalid(format!("the photos cannot be put in a zip: {err}"))
                })?;
            }
            let zipped = zip.finish().map_err(|err| {
                JobsError::Invalid(format!("the photos cannot be put in a zip: {err}"))
            })?;
            Ok(Bytes::from(zipped.into_inner()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn photo(bytes: &[u8]) -> Photo {
        Photo {
            name: "me.png".into(),
            bytes: Bytes::copy_from_slice(bytes),
        }
    }

    #[test]
    fn photos_are_recognised_by_their_first_bytes() {
        assert_eq!(image_extension(b"\xFF\xD8\xFF\xE0rest"), Some("jpg"));
        assert_eq!(image_extension(b"\x89PNG\r\n\x1a\nrest"), Some("png"));
        assert_eq!(image_extension(b"RIFF\0\0\0\0WEBPVP8 "), Some("webp"));
        assert_eq!(image_extension(b"GIF89a"), None);
        assert_eq!(image_extension(b"<svg"), None);
    }

    #[test]
    fn photos_become_a_zip_and_strangers_are_refused() {
        let zipped = training_zip(&TrainingUpload::Photos(vec![
            photo(b"\x89PNG\r\n\x1a\none"),
            photo(b"\xFF\xD8\xFFtwo"),
        ]))
        .unwrap();
        let archive = zip::ZipArchive::new(Cursor::new(zipped.as_ref())).unwrap();
        assert_eq!(archive.len(), 2);
        assert!(matches!(
            training_zip(&TrainingUpload::Photos(vec![photo(b"not an image")])),
            Err(JobsError::Invalid(_))
        ));
        let many = vec![photo(b"\x89PNG\r\n\x1a\n"); MAX_PHOTOS + 1];
        assert!(matches!(
            training_zip(&TrainingUpload::Photos(many)),
            Err(JobsError::TooLarge(_))
        ));
        assert!(matches!(
            training_zip(&TrainingUpload::Archive(Bytes::from_static(
                b"PK not really"
            ))),
            Err(JobsError::Invalid(_))
        ));
        assert!(training_zip(&TrainingUpload::Archive(zipped)).is_ok());
    }
}
