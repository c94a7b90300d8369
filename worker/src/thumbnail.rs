//! A small rendition of each stored output, for the gallery's cards (a phone should not
//! download a full-size upscale, tens of megabytes, to show a 300-pixel square).

use image::ImageFormat;
use image::codecs::jpeg::JpegEncoder;

/// The longest side of a thumbnail, in pixels: sharp on a 2× screen at a card's width.
pub const LONGEST_SIDE: u32 = 512;

/// JPEG quality of thumbnails: small files, no visible blocks at card size.
const QUALITY: u8 = 80;

/// Why no thumbnail was made (the card then shows the original).
#[derive(Debug, thiserror::Error)]
pub enum ThumbnailError {
    #[error("the image cannot be decoded: {0}")]
    Decode(#[source] image::ImageError),
    #[error("the thumbnail cannot be encoded: {0}")]
    Encode(#[source] image::ImageError),
}

/// A JPEG of at most [`LONGEST_SIDE`] pixels on its longest side, aspect kept. CPU work:
/// call it off the async threads (`spawn_blocking`).
pub fn render(bytes: &[u8]) -> Result<Vec<u8>, ThumbnailError> {
    let format = image::guess_format(bytes).unwrap_or(ImageFormat::Png);
    let original =
        image::load_from_memory_with_format(bytes, format).map_err(ThumbnailError::Decode)?;
    let fits = original.width() <= LONGEST_SIDE && original.height() <= LONGEST_SIDE;
    let small = if fits {
        original.to_rgb8()
    } else {
        original.thumbnail(LONGEST_SIDE, LONGEST_SIDE).to_rgb8()
    };
    let mut jpeg = Vec::new();
    JpegEncoder::new_with_quality(&mut jpeg, QUALITY)
        .encode_image(&small)
        .map_err(ThumbnailError::Encode)?;
    Ok(jpeg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let mut bytes = Vec::new();
        image::RgbaImage::from_pixel(width, height, image::Rgba([200, 40, 90, 255]))
            .write_to(&mut std::io::Cursor::new(&mut bytes), ImageFormat::Png)
            .unwrap();
        bytes
    }

    #[test]
    fn thumbnails_are_small_jpegs_that_keep_the_aspect() {
        let thumbnail = render(&png(2048, 1024)).unwrap();
        assert_eq!(image::guess_format(&thumbnail).unwrap(), ImageFormat::Jpeg);
        let decoded = image::load_from_memory(&thumbnail).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (512, 256));
        // Smaller images are not enlarged.
        let small = image::load_from_memory(&render(&png(100, 50)).unwrap()).unwrap();
        assert_eq!((small.width(), small.height()), (100, 50));
    }

    #[test]
    fn what_is_not_an_image_is_an_error() {
        assert!(matches!(
            render(b"not an image"),
            Err(ThumbnailError::Decode(_))
        ));
    }
}
