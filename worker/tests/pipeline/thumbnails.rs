//! Every stored output gets a small JPEG beside it, named in `thumb_urls` in the same order;
//! an output that cannot be decoded keeps the original in its place.

use serde_json::json;

use crate::helpers::{TestEnv, prediction};
use crate::images;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_outputs_get_small_renditions_in_order() {
    let server = images::start().await;
    let env = TestEnv::new(&server.host).await;
    env.insert_user("u1", 0).await;
    env.insert_generation("g1", "u1", "r-1", "a corgi", 4).await;
    let outputs = json!([
        server.url("/photo/1024x768.png"),
        server.url("/img/not-really.png"),
        server.url("/photo/300x200.png"),
    ]);
    env.send("m1", &prediction("r-1", "succeeded", outputs))
        .await;
    let mut config = env.config.clone();
    config.download.max_bytes = 8 * 1024 * 1024;
    let worker = env.spawn_worker_with(config).await;
    env.wait_for_statuses(&[("g1", "COMPLETED")]).await;

    let row = env.generation("g1").await;
    assert_eq!(row.image_urls.len(), 3);
    assert_eq!(row.thumb_urls.len(), 3, "one per image, in order");
    let stored = |url: &str| {
        let key = url.strip_prefix("http://media.test/media/").unwrap();
        std::fs::read(env.media_dir.join(key)).unwrap()
    };
    for (index, (width, height)) in [(0, (512, 384)), (2, (300, 200))] {
        let thumb = &row.thumb_urls[index];
        assert!(thumb.ends_with(&format!("{index}.thumb.jpg")), "{thumb}");
        let decoded = image::load_from_memory(&stored(thumb)).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (width, height));
    }
    assert_eq!(
        row.thumb_urls[1], row.image_urls[1],
        "not decodable: the original stands in"
    );
    worker.stop().await;
    env.cleanup().await;
}
