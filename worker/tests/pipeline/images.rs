//! A local HTTP server standing in for `replicate.delivery`, with the failures a real one
//! shows: missing files, oversized files, non-images, redirects, a flaky 503.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};

/// The bytes served for image `name`: a PNG signature and a body unique to the name.
pub fn image_bytes(name: &str) -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    for _ in 0..64 {
        bytes.extend_from_slice(name.as_bytes());
    }
    bytes
}

pub struct ImageServer {
    pub host: String,
    in_flight: std::sync::Arc<InFlight>,
}

/// Requests of `/counted/…` being answered now, and the most at once.
#[derive(Default)]
struct InFlight {
    now: std::sync::atomic::AtomicUsize,
    most: std::sync::atomic::AtomicUsize,
}

impl ImageServer {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.host)
    }

    /// The most `/counted/…` downloads that were in flight at once.
    pub fn most_in_flight(&self) -> usize {
        self.in_flight
            .most
            .load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[derive(Default)]
struct Flaky {
    failed_once: Mutex<HashSet<String>>,
}

/// A real PNG of `width` × `height` pixels (the others only start like one).
pub fn real_png(width: u32, height: u32) -> Vec<u8> {
    let mut bytes = Vec::new();
    image::RgbImage::from_pixel(width, height, image::Rgb([40, 120, 200]))
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
    bytes
}

fn png(name: &str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("image/png")
        .body(image_bytes(name))
}

pub async fn start() -> ImageServer {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
    let flaky = web::Data::new(Flaky::default());
    let in_flight = std::sync::Arc::new(InFlight::default());
    let counted = web::Data::from(in_flight.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(flaky.clone())
            .app_data(counted.clone())
            .route(
                "/counted/{name}.png",
                web::get().to(
                    |name: web::Path<String>, counted: web::Data<InFlight>| async move {
                        use std::sync::atomic::Ordering::SeqCst;
                        let now = counted.now.fetch_add(1, SeqCst) + 1;
                        counted.most.fetch_max(now, SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        counted.now.fetch_sub(1, SeqCst);
                        png(&name)
                    },
                ),
            )
            .route(
                "/img/{name}.png",
                web::get().to(|name: web::Path<String>| async move { png(&name) }),
            )
            .route(
                "/photo/{width}x{height}.png",
                web::get().to(|size: web::Path<(u32, u32)>| async move {
                    HttpResponse::Ok()
                        .content_type("image/png")
                        .body(real_png(size.0, size.1))
                }),
            )
            .route(
                "/slow/{name}.png",
                web::get().to(|name: web::Path<String>| async move {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    png(&name)
                }),
            )
            .route(
                "/flaky/{name}.png",
                web::get().to(
                    |name: web::Path<String>, flaky: web::Data<Flaky>| async move {
                        if flaky.failed_once.lock().unwrap().insert(name.to_string()) {
                            HttpResponse::ServiceUnavailable().finish()
                        } else {
                            png(&name)
                        }
                    },
                ),
            )
            .route(
                "/missing.png",
                web::get().to(|| async { HttpResponse::NotFound().finish() }),
            )
            .route(
                "/big.png",
                web::get().to(|| async {
                    HttpResponse::Ok()
                        .content_type("image/png")
                        .body(vec![0u8; 100 * 1024])
                }),
            )
            .route(
                "/disguised.png",
                web::get().to(|| async {
                    HttpResponse::Ok()
                        .content_type("image/png")
                        .body("<html><script>alert(document.cookie)</script></html>")
                }),
            )
            .route(
                "/page.html",
                web::get().to(|| async {
                    HttpResponse::Ok()
                        .content_type("text/html")
                        .body("<html>not an image</html>")
                }),
            )
            .route(
                "/redirect-out",
                web::get().to(|| async {
                    HttpResponse::Found()
                        .insert_header(("location", "http://disallowed.example/x.png"))
                        .finish()
                }),
            )
            .route(
                "/redirect-in/{name}",
                web::get().to(|name: web::Path<String>| async move {
                    HttpResponse::Found()
                        .insert_header(("location", format!("/img/{name}.png")))
                        .finish()
                }),
            )
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    tokio::spawn(server);
    ImageServer { host, in_flight }
}
