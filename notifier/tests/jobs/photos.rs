//! Training from photos on the person's device: `POST /api/models` as a form. The notifier
//! zips the photos, hands the zip to Replicate's files API and trains on its URL; photos
//! that are not images are `400`, too many or too large `413`, and nothing is debited then.

use std::io::Cursor;
use std::time::Duration;

use serde_json::Value;

use crate::harness::*;

fn png() -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend_from_slice(&[7u8; 2048]);
    bytes
}

fn form(name: &str, photos: Vec<(&str, Vec<u8>)>) -> reqwest::multipart::Form {
    let mut form = reqwest::multipart::Form::new().text("name", name.to_owned());
    for (file_name, bytes) in photos {
        form = form.part(
            "photos",
            reqwest::multipart::Part::bytes(bytes).file_name(file_name.to_owned()),
        );
    }
    form
}

async fn send(api: &Api, user: &str, form: reqwest::multipart::Form) -> (u16, Value) {
    let response = api
        .http
        .post(format!("{}/api/models", api.base))
        .bearer_auth(api.auth.mint(user, Duration::from_secs(60)))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_trains_on_photos_from_the_device() -> anyhow::Result<()> {
    let api = Api::start(Replicate::Simulator).await;
    api.user("u1", 100).await;

    let (status, answer) = send(
        &api,
        "u1",
        form(
            "Me",
            vec![("a.png", png()), ("notes.txt", b"hello".to_vec())],
        ),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("notes.txt"),
        "{answer}"
    );
    let many = (0..51).map(|_| ("p.png", png())).collect();
    let (status, answer) = send(&api, "u1", form("Me", many)).await;
    assert_eq!(status, 413, "{answer}");
    let huge = vec![("big.png", vec![0x89; 101 * 1024 * 1024])];
    let (status, answer) = send(&api, "u1", form("Me", huge)).await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(
        api.credits("u1").await,
        100,
        "nothing debited for refused uploads"
    );
    assert!(api.movements("u1").await.is_empty());

    let photos = vec![("a.png", png()), ("b.png", png()), ("c.png", png())];
    let (status, created) = send(&api, "u1", form("Me", photos)).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["job"]["kind"], "training");
    assert_eq!(created["credits"], 60);
    let training = api
        .on_replicate("trainings", created["job"]["job_id"].as_str().unwrap())
        .await;
    let file_url = training["input"]["input_images"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        file_url.starts_with(&format!("{}/v1/files/", api.simulator)),
        "{file_url}"
    );
    // The file on Replicate is a zip of the three photos.
    let zip = api
        .http
        .get(format!("{file_url}/download"))
        .send()
        .await?
        .bytes()
        .await?;
    let archive = zip::ZipArchive::new(Cursor::new(zip.as_ref()))?;
    assert_eq!(archive.len(), 3);
    api.stop().await;
    Ok(())
}
