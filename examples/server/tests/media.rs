//! Uploads and downloads over real sockets: `docs/protocol.md` section 4's
//! upload and media routes and section 5.1, messages of type image, voice
//! and file.

mod common;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use chat_core::testing::media as fixtures;
use common::*;
use serde_json::{Value, json};

/// A download: status, headers and the raw bytes.
struct Got {
    status: u16,
    headers: reqwest::header::HeaderMap,
    bytes: Vec<u8>,
}

impl Got {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
}

async fn download(server: &Server, user: &str, path: &str, range: Option<&str>) -> Got {
    let mut req = reqwest::Client::new()
        .get(server.url(path))
        .bearer_auth(token(user));
    if let Some(range) = range {
        req = req.header("range", range);
    }
    let r = tokio::time::timeout(WAIT, req.send())
        .await
        .expect("download timed out")
        .expect("download");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let bytes = r.bytes().await.expect("body").to_vec();
    Got {
        status,
        headers,
        bytes,
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn chat_of(server: &Server, a: &str, b: &str) -> String {
    let mut ws = server.ws(a).await;
    let chat = ws.direct(b).await;
    s(&chat, "id").to_owned()
}

#[tokio::test]
async fn a_photo_comes_back_upright_without_its_location() {
    let server = Server::start().await;
    let chat = chat_of(&server, "ann", "bob").await;
    // 60x40, stored rotated: EXIF orientation 6 says "turn 90 degrees
    // clockwise to view".
    let jpeg = fixtures::jpeg_with_gps_exif(60, 40, 6);
    assert!(contains(&jpeg, b"Exif\0\0"));
    assert!(contains(&jpeg, &fixtures::GPS_LATITUDE));
    let r = upload_as(&server, "ann", &chat, "IMG_0001.jpg", "image/jpeg", &jpeg).await;
    let media = r.expect(201)["media"].clone();
    assert_eq!(media["mime"], "image/jpeg");
    assert_eq!(
        (media["width"].as_u64(), media["height"].as_u64()),
        (Some(40), Some(60))
    );
    let id = s(&media, "id").to_owned();
    assert_eq!(s(&media, "url"), format!("/api/v1/chat/media/{id}"));
    assert_eq!(
        s(&media, "thumbnail_url"),
        format!("/api/v1/chat/media/{id}?thumbnail=true")
    );

    let got = download(&server, "ann", s(&media, "url"), None).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("content-type"), "image/jpeg");
    assert_eq!(got.header("cache-control"), "private");
    assert_eq!(got.header("x-content-type-options"), "nosniff");
    assert_eq!(got.header("content-length"), got.bytes.len().to_string());
    assert!(got.header("content-disposition").starts_with("inline"));
    assert!(!contains(&got.bytes, b"Exif"), "EXIF survived");
    assert!(
        !contains(&got.bytes, &fixtures::GPS_LATITUDE),
        "GPS survived"
    );
    let image = image::load_from_memory(&got.bytes)
        .expect("a JPEG")
        .to_rgb8();
    assert_eq!(image.dimensions(), (40, 60), "upright");
    // The left half was LEFT_COLOUR; turned clockwise, it is the top half.
    let top = image.get_pixel(20, 5).0;
    let bottom = image.get_pixel(20, 55).0;
    let near = |a: [u8; 3], b: [u8; 3]| a.iter().zip(b).all(|(x, y)| x.abs_diff(y) < 60);
    assert!(near(top, fixtures::LEFT_COLOUR), "top {top:?}");
    assert!(near(bottom, fixtures::RIGHT_COLOUR), "bottom {bottom:?}");

    let thumb = download(&server, "ann", s(&media, "thumbnail_url"), None).await;
    assert_eq!(thumb.status, 200);
    assert_eq!(thumb.header("content-type"), "image/jpeg");
    let t = image::load_from_memory(&thumb.bytes).expect("thumbnail");
    assert!(t.width().max(t.height()) <= 320);

    // A big one is scaled down to 320 on its longer side.
    let big = fixtures::png(1000, 600);
    let r = upload_as(&server, "ann", &chat, "big.png", "image/png", &big).await;
    let media = r.expect(201)["media"].clone();
    let thumb = download(&server, "ann", s(&media, "thumbnail_url"), None).await;
    let t = image::load_from_memory(&thumb.bytes).expect("thumbnail");
    assert_eq!((t.width(), t.height()), (320, 192));
}

#[tokio::test]
async fn bombs_impostors_and_oversize_uploads_are_refused_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let server = Server::with_config(&format!(
        "[media]\nfile_max_bytes = 1000000\nspool_dir = {:?}\n",
        spool.display().to_string()
    ))
    .await;
    let media_dir = server.dir().join("media");
    let chat = chat_of(&server, "ann", "bob").await;

    let bomb = fixtures::png_declaring(50_000, 50_000);
    let started = Instant::now();
    upload_as(&server, "ann", &chat, "bomb.png", "image/png", &bomb)
        .await
        .expect_error(413, "too_large");
    assert!(started.elapsed() < Duration::from_secs(2));
    let hwm = peak_rss_kib(server.pid());
    assert!(
        hwm < 300 * 1024,
        "the server's peak memory grew to {hwm} KiB"
    );

    upload_as(
        &server,
        "ann",
        &chat,
        "cat.png",
        "image/png",
        &fixtures::elf_bytes(),
    )
    .await
    .expect_error(415, "unsupported_media_type");
    upload_as(
        &server,
        "ann",
        &chat,
        "notes.txt",
        "application/pdf",
        b"just text, honest",
    )
    .await
    .expect_error(415, "unsupported_media_type");
    upload_as(
        &server,
        "ann",
        &chat,
        "big.pdf",
        "application/pdf",
        &fixtures::pdf_padded(1_500_000, "big"),
    )
    .await
    .expect_error(413, "too_large");
    // Over every limit by its announced length: answered before the body
    // is sent (an HTTP client writing the body meanwhile would see the
    // connection close, so this one only sends the headers).
    let head = format!(
        "POST /api/v1/chat/upload/{chat} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: multipart/form-data; boundary=x\r\nContent-Length: {}\r\n\r\n",
        server.addr,
        token("ann"),
        30u64 << 20
    );
    let answer = raw_exchange(&server, head.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("too_large"), "{answer}");
    // A voice note over five minutes.
    upload_as(
        &server,
        "ann",
        &chat,
        "long.wav",
        "audio/wav",
        &fixtures::wav_pcm(301_000, 8000),
    )
    .await
    .expect_error(413, "too_large");
    // No field "file".
    server
        .http_raw(
            "POST",
            &format!("/api/v1/chat/upload/{chat}"),
            Some(&token("ann")),
            "multipart/form-data; boundary=x",
            b"--x\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nhi\r\n--x--\r\n"
                .to_vec(),
        )
        .await
        .expect_error(400, "bad_request");

    let left = files_under(&media_dir);
    assert!(left.is_empty(), "files left in the media dir: {left:?}");
    let spooled = files_under(&spool);
    assert!(
        spooled.is_empty(),
        "files left in the spool dir: {spooled:?}"
    );
}

/// Sends `request` on a new connection and reads the answer's head and
/// whatever body arrives within a moment.
async fn raw_exchange(server: &Server, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut buf = vec![0; 4096];
    let mut got = Vec::new();
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await
    {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if contains(&got, b"}") {
            break;
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// The process's peak resident memory (`VmHWM`), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn only_participants_upload_download_and_attach() {
    let server = Server::start().await;
    let chat = chat_of(&server, "ann", "bob").await;
    let png = fixtures::png(16, 16);
    upload_as(&server, "eve", &chat, "x.png", "image/png", &png)
        .await
        .expect_error(404, "not_found");
    upload_as(
        &server,
        "eve",
        "01JAAAAAAAAAAAAAAAAAAAAAAA",
        "x.png",
        "image/png",
        &png,
    )
    .await
    .expect_error(404, "not_found");
    let mine = upload_as(&server, "ann", &chat, "x.png", "image/png", &png).await;
    let media = mine.expect(201)["media"].clone();
    let url = s(&media, "url").to_owned();
    assert_eq!(download(&server, "eve", &url, None).await.status, 404);
    assert_eq!(
        download(&server, "bob", &url, None).await.status,
        404,
        "not sent yet"
    );
    let bobs = upload_as(&server, "bob", &chat, "y.png", "image/png", &png).await;
    let bobs = bobs.expect(201)["media"].clone();

    let mut ann = server.ws("ann").await;
    let mut bob = server.ws("bob").await;
    let send = |cid: &str, ty: &str, media: &Value| json!({"chat_id": chat, "client_msg_id": cid, "type": ty, "media_id": media["id"]});
    // Bob's upload in Ann's message.
    assert_eq!(
        ann.err("send_message", send("a1", "image", &bobs)).await,
        "not_found"
    );
    // The wrong type.
    assert_eq!(
        ann.err("send_message", send("a2", "voice", &media)).await,
        "bad_request"
    );
    let sent = ann.ok("send_message", send("a3", "image", &media)).await["message"].clone();
    assert_eq!(sent["type"], "image");
    assert_eq!(sent["media"]["id"], media["id"]);
    assert_eq!(sent["media"]["width"], 16);
    let got = bob.event("message_received").await;
    assert_eq!(got["media"]["url"], url.as_str());
    // Once only.
    assert_eq!(
        ann.err("send_message", send("a4", "image", &media)).await,
        "conflict"
    );
    let got = download(&server, "bob", &url, None).await;
    assert_eq!(got.status, 200);
    assert_eq!(download(&server, "eve", &url, None).await.status, 404);
}

#[tokio::test]
async fn voice_notes_are_timed_from_their_containers() {
    let server = Server::start().await;
    let chat = chat_of(&server, "ann", "bob").await;
    let cases = [
        (
            "note.opus",
            fixtures::ogg_opus(3_000, 312),
            3_000.0,
            "audio/ogg",
        ),
        (
            "note.mp3",
            fixtures::mp3_cbr(4_000),
            fixtures::mp3_cbr_exact_ms(4_000),
            "audio/mpeg",
        ),
        (
            "note.wav",
            fixtures::wav_pcm(2_500, 16_000),
            2_500.0,
            "audio/wav",
        ),
    ];
    for (name, bytes, want, mime) in cases {
        let r = upload_as(
            &server,
            "ann",
            &chat,
            name,
            "application/octet-stream",
            &bytes,
        )
        .await;
        let media = r.expect(201)["media"].clone();
        assert_eq!(media["mime"], mime, "{name}");
        let ms = media["duration_ms"].as_f64().expect("duration_ms");
        assert!((ms - want).abs() <= 50.0, "{name}: {ms} ms, want {want}");
        assert!(media["thumbnail_url"].is_null());
    }
}

#[tokio::test]
async fn files_are_sealed_at_rest_and_served_in_ranges() {
    let server = Server::start().await;
    let chat = chat_of(&server, "ann", "bob").await;
    let marker = unique("pdf-marker");
    let bytes = fixtures::pdf_padded(200_000, &marker);
    let r = upload_as(
        &server,
        "ann",
        &chat,
        "Plan (v2) é.pdf",
        "text/plain",
        &bytes,
    )
    .await;
    let media = r.expect(201)["media"].clone();
    assert_eq!(media["mime"], "application/pdf");
    assert_eq!(media["name"], "Plan (v2) é.pdf");
    assert_eq!(media["size"], bytes.len());
    let url = s(&media, "url").to_owned();
    for file in files_under(&server.dir().join("media")) {
        let stored = std::fs::read(&file).unwrap();
        assert!(
            !contains(&stored, marker.as_bytes()),
            "plaintext in {file:?}"
        );
    }

    let whole = download(&server, "ann", &url, None).await;
    assert_eq!(whole.status, 200);
    assert_eq!(whole.bytes, bytes);
    assert_eq!(whole.header("accept-ranges"), "bytes");
    assert!(
        whole
            .header("content-disposition")
            .starts_with("attachment; filename=\"Plan _v2_ _.pdf\"")
    );
    assert!(
        whole
            .header("content-disposition")
            .contains("filename*=UTF-8''Plan%20%28v2%29%20%C3%A9.pdf")
    );
    let total = bytes.len();
    for (header, start, end) in [
        ("bytes=0-99", 0, 100),
        ("bytes=65530-65545", 65_530, 65_546),
        ("bytes=150000-", 150_000, total),
        ("bytes=-10", total - 10, total),
    ] {
        let got = download(&server, "ann", &url, Some(header)).await;
        assert_eq!(got.status, 206, "{header}");
        assert_eq!(got.bytes, &bytes[start..end], "{header}");
        assert_eq!(
            got.header("content-range"),
            format!("bytes {}-{}/{total}", start, end - 1)
        );
        assert_eq!(got.header("content-length"), (end - start).to_string());
    }
    let past = download(&server, "ann", &url, Some("bytes=999999-")).await;
    assert_eq!(past.status, 416);
    assert_eq!(past.header("content-range"), format!("bytes */{total}"));
    // Several ranges: the whole file, as RFC 9110 allows.
    let many = download(&server, "ann", &url, Some("bytes=0-1,5-6")).await;
    assert_eq!(many.status, 200);
}

#[tokio::test]
async fn deleting_a_message_removes_its_files() {
    let server = Server::start().await;
    let chat = chat_of(&server, "ann", "bob").await;
    let media_dir = server.dir().join("media");
    let r = upload_as(
        &server,
        "ann",
        &chat,
        "p.png",
        "image/png",
        &fixtures::png(400, 300),
    )
    .await;
    let media = r.expect(201)["media"].clone();
    assert_eq!(files_under(&media_dir).len(), 2, "image and thumbnail");
    let mut ann = server.ws("ann").await;
    let sent = ann
        .ok(
            "send_message",
            json!({"chat_id": chat, "client_msg_id": "p1", "type": "image", "media_id": media["id"]}),
        )
        .await["message"]
        .clone();
    ann.ok("delete_message", json!({"message_id": sent["id"]}))
        .await;
    let left = files_under(&media_dir);
    assert!(left.is_empty(), "files left: {left:?}");
    assert_eq!(
        download(&server, "ann", s(&media, "url"), None)
            .await
            .status,
        404
    );
    assert_eq!(
        download(&server, "ann", s(&media, "thumbnail_url"), None)
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn the_server_stays_responsive_under_fifty_image_uploads() {
    let server = Server::start().await;
    let chat = chat_of(&server, "ann", "bob").await;
    let photo = fixtures::png(800, 600);
    let (content_type, body) = multipart("p.png", "image/png", &photo);
    let client = reqwest::Client::new();
    let url = server.url(&format!("/api/v1/chat/upload/{chat}"));
    let uploads = futures::future::join_all((0..50).map(|_| {
        client
            .post(&url)
            .bearer_auth(token("ann"))
            .header("content-type", &content_type)
            .body(body.clone())
            .send()
    }));
    tokio::pin!(uploads);
    let mut bob = server.ws("bob").await;
    let mut slowest = Duration::ZERO;
    let mut pings = 0;
    let answers = loop {
        tokio::select! {
            answers = &mut uploads => break answers,
            () = async {
                let started = Instant::now();
                bob.ok("ping", json!({})).await;
                slowest = slowest.max(started.elapsed());
                pings += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            } => {}
        }
    };
    for answer in answers {
        assert_eq!(answer.expect("upload").status().as_u16(), 201);
    }
    assert!(pings > 0);
    assert!(
        slowest < Duration::from_millis(100),
        "a ping took {slowest:?}"
    );
}

#[tokio::test]
async fn uploads_spend_a_per_user_budget_of_bytes() {
    let server = Server::with_config(
        "[rate_limits.upload]\nper_minute_bytes = 300000\nburst_bytes = 300000\n",
    )
    .await;
    let chat = chat_of(&server, "ann", "bob").await;
    let file = fixtures::pdf_padded(120_000, "budget");
    for _ in 0..2 {
        upload_as(&server, "ann", &chat, "a.pdf", "application/pdf", &file)
            .await
            .expect(201);
    }
    let r = upload_as(&server, "ann", &chat, "a.pdf", "application/pdf", &file).await;
    r.expect_error(429, "rate_limited");
    assert!(r.headers.contains_key("retry-after"));
    // Someone else's budget is their own.
    upload_as(&server, "bob", &chat, "a.pdf", "application/pdf", &file)
        .await
        .expect(201);
}
