//! The outputs the simulator serves: real PNG images, different for every job and output.

/// Width and height of generated images.
pub const SIZE: u32 = 64;

/// A PNG for output `index` of prediction `id`: a colour gradient seeded by both, so the
/// same (id, index) always gives the same bytes (tests compare stored copies to these).
pub fn png(id: &str, index: usize) -> Vec<u8> {
    let seed = fnv1a(format!("{id}/{index}").as_bytes());
    let [r0, g0, b0, r1, g1, b1, ..] = seed.to_le_bytes();
    let mut pixels = Vec::with_capacity((SIZE * SIZE * 3) as usize);
    for y in 0..SIZE {
        for x in 0..SIZE {
            let t = (x + y) as f32 / (2 * SIZE - 2) as f32;
            let mix = |a: u8, b: u8| (f32::from(a) * (1.0 - t) + f32::from(b) * t) as u8;
            pixels.extend_from_slice(&[mix(r0, r1), mix(g0, g1), mix(b0, b1)]);
        }
    }
    let mut bytes = Vec::new();
    {
        let mut encoder = ::png::Encoder::new(&mut bytes, SIZE, SIZE);
        encoder.set_color(::png::ColorType::Rgb);
        encoder.set_depth(::png::BitDepth::Eight);
        let mut writer = encoder.write_header().expect("in-memory PNG header");
        writer
            .write_image_data(&pixels)
            .expect("in-memory PNG data");
    }
    bytes
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_png_and_differ_per_job_and_output() {
        let a = png("job-a", 0);
        assert!(a.starts_with(b"\x89PNG\r\n\x1a\n"));
        assert_eq!(a, png("job-a", 0));
        assert_ne!(a, png("job-a", 1));
        assert_ne!(a, png("job-b", 0));
        let decoder = ::png::Decoder::new(std::io::Cursor::new(a));
        let reader = decoder.read_info().unwrap();
        assert_eq!((reader.info().width, reader.info().height), (SIZE, SIZE));
    }
}
