//! `chat-bench upload`: media uploads through a real `chat-server`.
//!
//! Each workload gets a fresh server, so that its peak memory is its own.
//! alice opens a direct chat with bob over the HTTP API, then C clients
//! (each its own connection) upload N copies of one file into it, the
//! multipart body built once. The workloads:
//!
//! - `pdf`, the same-run baseline: a PDF of about 10 MiB, which the server
//!   only streams to a spool file, sniffs, seals in 64 KiB parts and
//!   stores. What every upload costs before any processing.
//! - `jpeg`: a photo-like JPEG of about 10 MiB (4000x3000, the quality
//!   chosen so that the file just fits the 10 MiB image limit), which the
//!   server also decodes, turns upright, re-encodes at quality 85 and
//!   thumbnails.
//! - `png`: a photo-like PNG of about 10 MiB (its size chosen to fit),
//!   decoded, re-encoded as PNG and thumbnailed.
//!
//! Reported per workload: uploads/s, MiB/s of file bytes, latency
//! percentiles, the server's CPU seconds per upload, its peak RSS (the
//! kernel's VmHWM, over the server's whole life) and the highest VmRSS
//! sampled while uploading; then each image workload's ratio to the PDF
//! baseline. Every upload must answer 201; failures are counted and the
//! first one's body printed.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use clap::{Args, ValueEnum};
use image::{
    Rgb, RgbImage,
    codecs::{jpeg::JpegEncoder, png::PngEncoder},
};

use crate::{
    Error,
    load::{Percentiles, histogram},
    procstat,
    server::{self, Server},
};

const MIB: usize = 1 << 20;

/// What is uploaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Kind {
    /// A PDF: spooled, sealed and stored, no processing (the baseline).
    Pdf,
    /// A photo-like JPEG: decoded, re-encoded and thumbnailed as well.
    Jpeg,
    /// A photo-like PNG: decoded, re-encoded and thumbnailed as well.
    Png,
}

/// `chat-bench upload`
#[derive(Debug, Clone, Args)]
pub(crate) struct UploadArgs {
    /// Uploads per workload (after one warm-up upload, not counted).
    #[arg(long, default_value_t = 40)]
    uploads: usize,
    /// Concurrent clients, each on its own connection.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Workloads, in this order; the ratios need `pdf`.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Kind::Pdf, Kind::Jpeg, Kind::Png])]
    workloads: Vec<Kind>,
    /// The largest file, in bytes; each file is made as close to it as
    /// it gets (default: the server's image limit, 10 MiB).
    #[arg(long, default_value_t = 10 * MIB)]
    max_bytes: usize,
    /// The chat-server binary (default: next to this one).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// One file, as it is uploaded.
#[derive(Debug)]
struct File {
    kind: Kind,
    /// What it is, for the report: format, dimensions, quality, size.
    what: String,
    /// Bytes of the file itself (not of the multipart body).
    size: usize,
    /// The `Content-Type` of the request, with the boundary.
    content_type: String,
    /// The whole multipart body, cloned (not copied) for each upload.
    body: Bytes,
}

impl File {
    fn new(kind: Kind, what: String, bytes: &[u8]) -> Self {
        let (name, mime) = match kind {
            Kind::Pdf => ("report.pdf", "application/pdf"),
            Kind::Jpeg => ("photo.jpg", "image/jpeg"),
            Kind::Png => ("photo.png", "image/png"),
        };
        let boundary = "----chat-bench-boundary-5c1e";
        let mut body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: {mime}\r\n\r\n"
        )
        .into_bytes();
        body.extend_from_slice(bytes);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        Self {
            kind,
            what,
            size: bytes.len(),
            content_type: format!("multipart/form-data; boundary={boundary}"),
            body: body.into(),
        }
    }
}

/// One workload's figures.
#[derive(Debug, serde::Serialize)]
struct Row {
    workload: Kind,
    file: String,
    file_bytes: usize,
    uploads: usize,
    ok: u64,
    failed: u64,
    first_error: Option<String>,
    duration_s: f64,
    uploads_per_sec: f64,
    mib_per_sec: f64,
    latency_ms: Percentiles,
    server_cpu_s: f64,
    server_cpu_s_per_upload: f64,
    /// VmRSS once the server was up and had taken the warm-up upload.
    server_rss_mib_before: f64,
    /// VmHWM at the end: the highest RSS of the server's life.
    server_peak_rss_mib: f64,
    /// The highest VmRSS sampled (every 20 ms) while uploading.
    server_max_sampled_rss_mib: f64,
}

/// An image workload against the PDF baseline of the same run.
#[derive(Debug, serde::Serialize)]
struct Ratio {
    workload: Kind,
    uploads_per_sec: f64,
    cpu_per_upload: f64,
}

pub(crate) async fn run(args: UploadArgs) -> Result<(), Error> {
    let secret = server::random_secret()?;
    let mut files = Vec::new();
    for &kind in &args.workloads {
        let max = args.max_bytes;
        let file = Arc::new(tokio::task::spawn_blocking(move || make(kind, max)).await??);
        if !args.json {
            println!("{:<5} {}", format!("{kind:?}").to_lowercase(), file.what);
        }
        files.push(file);
    }
    let mut rows = Vec::with_capacity(files.len());
    for file in &files {
        rows.push(workload(&args, file, &secret).await?);
    }
    let baseline = rows.iter().find(|r| r.workload == Kind::Pdf);
    let ratios: Vec<Ratio> = rows
        .iter()
        .filter(|r| r.workload != Kind::Pdf)
        .filter_map(|r| {
            let pdf = baseline?;
            Some(Ratio {
                workload: r.workload,
                uploads_per_sec: r.uploads_per_sec / pdf.uploads_per_sec,
                cpu_per_upload: r.server_cpu_s_per_upload / pdf.server_cpu_s_per_upload,
            })
        })
        .collect();
    if args.json {
        let report = serde_json::json!({
            "uploads": args.uploads,
            "concurrency": args.concurrency,
            "workloads": rows,
            "ratios_to_pdf": ratios,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&args, &rows, &ratios);
    }
    if rows.iter().any(|r| r.failed > 0) {
        return Err("some uploads failed".into());
    }
    Ok(())
}

/// Spawns a server, opens the chat, warms up with one upload, then
/// uploads `args.uploads` times from `args.concurrency` clients.
async fn workload(args: &UploadArgs, file: &Arc<File>, secret: &str) -> Result<Row, Error> {
    let dir = tempfile::tempdir()?;
    // Writes (each upload is one) and upload bytes unlimited: 1 TiB a
    // minute is 2^30 of the limiter's KiB cells, within its u32.
    let unlimited = server::UNLIMITED;
    let config = format!(
        "[rate_limits]\nwrite = {unlimited}\nother = {unlimited}\n\
         upload = {{ per_minute_bytes = {tib}, burst_bytes = {tib} }}\n",
        tib = 1u64 << 40
    );
    let cmd = server::chat_server(args.server_bin.as_deref(), dir.path(), &config, secret)?;
    let server = Server::spawn(cmd, dir).await?;
    let pid = server.pid().ok_or("the server has no pid")?;
    let base = format!("http://{}/api/v1/chat", server.addr);
    let alice: Arc<str> = server::token(secret, "alice")?.into();

    let client = reqwest::Client::new();
    let r = client
        .post(format!("{base}/sessions"))
        .bearer_auth(&alice)
        .json(&serde_json::json!({"user_id": "bob"}))
        .send()
        .await?;
    let status = r.status();
    let text = r.text().await?;
    if !status.is_success() {
        return Err(format!("opening the chat: {status} {text}").into());
    }
    let chat: serde_json::Value = serde_json::from_str(&text)?;
    let chat_id = chat["id"].as_str().ok_or("no chat id in the answer")?;
    let url: Arc<str> = format!("{base}/upload/{chat_id}").into();

    // Warm-up, outside the measured window: first use of the spool, the
    // store's directories, the uploader's data key and the thread pool.
    match post(&client, &url, &alice, file).await? {
        (201, _) => {}
        (status, body) => return Err(format!("warm-up upload: {status} {body}").into()),
    }

    let before = procstat::sample(pid);
    let max_rss = Arc::new(AtomicU64::new(before.rss));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (max_rss, stop) = (max_rss.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                max_rss.fetch_max(procstat::sample(pid).rss, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let clients: Vec<_> = (0..args.concurrency.max(1))
        .map(|_| {
            let (next, url, alice, file) = (next.clone(), url.clone(), alice.clone(), file.clone());
            let n = args.uploads;
            tokio::spawn(async move { client_loop(n, &next, &url, &alice, &file).await })
        })
        .collect();
    let mut latency = histogram()?;
    let (mut ok, mut failed, mut first_error) = (0, 0, None);
    for c in clients {
        let stats = c.await??;
        latency.add(&stats.latency)?;
        ok += stats.ok;
        failed += stats.failed;
        first_error = first_error.or(stats.first_error);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let after = procstat::sample(pid);
    stop.store(true, Ordering::Relaxed);
    sampler.await?;
    drop(server);

    let cpu = after.cpu.saturating_sub(before.cpu).as_secs_f64();
    let mib = |bytes: u64| bytes as f64 / MIB as f64;
    Ok(Row {
        workload: file.kind,
        file: file.what.clone(),
        file_bytes: file.size,
        uploads: args.uploads,
        ok,
        failed,
        first_error,
        duration_s: elapsed,
        uploads_per_sec: ok as f64 / elapsed,
        mib_per_sec: ok as f64 * file.size as f64 / MIB as f64 / elapsed,
        latency_ms: Percentiles::of(&latency),
        server_cpu_s: cpu,
        server_cpu_s_per_upload: cpu / ok.max(1) as f64,
        server_rss_mib_before: mib(before.rss),
        server_peak_rss_mib: mib(after.peak_rss),
        server_max_sampled_rss_mib: mib(max_rss.load(Ordering::Relaxed).max(after.rss)),
    })
}

/// One client's results.
#[derive(Debug)]
struct ClientStats {
    latency: hdrhistogram::Histogram<u64>,
    ok: u64,
    failed: u64,
    first_error: Option<String>,
}

/// Uploads until `n` uploads have been taken by all clients together.
async fn client_loop(
    n: usize,
    next: &AtomicUsize,
    url: &str,
    token: &str,
    file: &File,
) -> Result<ClientStats, Error> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()?;
    let mut stats = ClientStats {
        latency: histogram()?,
        ok: 0,
        failed: 0,
        first_error: None,
    };
    while next.fetch_add(1, Ordering::Relaxed) < n {
        let t = Instant::now();
        match post(&client, url, token, file).await {
            Ok((201, _)) => {
                stats
                    .latency
                    .saturating_record(t.elapsed().as_micros().max(1) as u64);
                stats.ok += 1;
            }
            Ok((status, body)) => {
                stats.failed += 1;
                stats.first_error.get_or_insert(format!("{status} {body}"));
            }
            Err(e) => {
                stats.failed += 1;
                stats.first_error.get_or_insert(e.to_string());
            }
        }
    }
    Ok(stats)
}

/// One upload; the status and the body of the answer.
async fn post(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    file: &File,
) -> Result<(u16, String), Error> {
    let r = client
        .post(url)
        .bearer_auth(token)
        .header(reqwest::header::CONTENT_TYPE, &file.content_type)
        .body(file.body.clone())
        .send()
        .await?;
    let status = r.status().as_u16();
    Ok((status, r.text().await?))
}

fn print_table(args: &UploadArgs, rows: &[Row], ratios: &[Ratio]) {
    println!(
        "upload: {} uploads per workload (after one warm-up), {} clients, a fresh chat-server each",
        args.uploads, args.concurrency
    );
    println!(
        "  {:<5} {:>8} {:>9} {:>7} {:>8} {:>8} {:>9} {:>10} {:>10} {:>10}",
        "",
        "ok",
        "uploads/s",
        "MiB/s",
        "p50 ms",
        "p99 ms",
        "CPU-s/up",
        "RSS start",
        "max VmRSS",
        "VmHWM"
    );
    for r in rows {
        println!(
            "  {:<5} {:>8} {:>9.2} {:>7.1} {:>8.0} {:>8.0} {:>9.3} {:>6.1} MiB {:>6.1} MiB {:>6.1} MiB",
            format!("{:?}", r.workload).to_lowercase(),
            format!("{}/{}", r.ok, r.uploads),
            r.uploads_per_sec,
            r.mib_per_sec,
            r.latency_ms.p50,
            r.latency_ms.p99,
            r.server_cpu_s_per_upload,
            r.server_rss_mib_before,
            r.server_max_sampled_rss_mib,
            r.server_peak_rss_mib,
        );
    }
    for q in ratios {
        println!(
            "  {} / pdf: {:.3}x uploads/s, {:.2}x CPU per upload",
            format!("{:?}", q.workload).to_lowercase(),
            q.uploads_per_sec,
            q.cpu_per_upload
        );
    }
    for r in rows.iter().filter(|r| r.failed > 0) {
        println!(
            "  {:?}: {} uploads failed; the first: {}",
            r.workload,
            r.failed,
            r.first_error.as_deref().unwrap_or("?")
        );
    }
}

/// The file of a workload, as close to `max` bytes as it gets.
fn make(kind: Kind, max: usize) -> Result<File, Error> {
    match kind {
        Kind::Pdf => {
            // The fixture, padded with a `%` comment line.
            let mut bytes = chat_core::testing::media::pdf_bytes();
            bytes.extend_from_slice(b"% padding ");
            bytes.resize(max.max(bytes.len()), b'x');
            let what = format!("PDF, {}", size(bytes.len()));
            Ok(File::new(kind, what, &bytes))
        }
        Kind::Jpeg => {
            let (w, h) = (4000, 3000);
            let mut tried = None;
            // Noise until the file at quality 95 no longer fits (a photo
            // at high ISO), then the highest quality that fits.
            for noise in [12, 24, 48, 96] {
                let img = photo(w, h, noise);
                let top = jpeg(&img, 95)?;
                if top.len() <= max {
                    tried = Some((95, noise, top));
                    continue;
                }
                let (mut lo, mut hi) = (1u8, 94u8);
                while lo <= hi {
                    let q = lo + (hi - lo) / 2;
                    let bytes = jpeg(&img, q)?;
                    if bytes.len() <= max {
                        tried = Some((q, noise, bytes));
                        lo = q + 1;
                    } else {
                        hi = q - 1;
                    }
                }
                break;
            }
            let (q, noise, bytes) = tried.ok_or("no JPEG quality fits --max-bytes")?;
            let what = format!(
                "JPEG {w}x{h}, quality {q}, noise +-{noise}, {}",
                size(bytes.len())
            );
            Ok(File::new(kind, what, &bytes))
        }
        Kind::Png => {
            // The noise of the JPEG; dimensions scaled until the file is
            // within 5% under `max` (size goes with the pixel count).
            let (mut w, mut h, noise) = (4000u32, 3000u32, 24);
            let mut fits = None;
            for _ in 0..8 {
                let bytes = png(&photo(w, h, noise))?;
                let len = bytes.len();
                if len <= max {
                    fits = Some((w, h, bytes));
                    if len * 100 >= max * 95 {
                        break;
                    }
                }
                let scale = (max as f64 * 0.975 / len as f64).sqrt();
                w = ((w as f64 * scale) as u32).max(1);
                h = ((h as f64 * scale) as u32).max(1);
            }
            let (w, h, bytes) = fits.ok_or("no PNG size fits --max-bytes")?;
            let what = format!("PNG {w}x{h}, noise +-{noise}, {}", size(bytes.len()));
            Ok(File::new(kind, what, &bytes))
        }
    }
}

fn size(bytes: usize) -> String {
    format!("{bytes} bytes ({:.2} MiB)", bytes as f64 / MIB as f64)
}

/// A photo-like picture: smooth gradients and broad soft waves under
/// per-pixel noise of +-`noise` in each channel, like a camera's sensor
/// noise. Deterministic.
fn photo(width: u32, height: u32, noise: u8) -> RgbImage {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    RgbImage::from_fn(width, height, |x, y| {
        // xorshift64: 16 random bits per channel.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let (fx, fy) = (x as f32 / width as f32, y as f32 / height as f32);
        let base = [
            40.0 + 170.0 * fx,
            60.0 + 140.0 * fy,
            128.0 + 80.0 * (fx * 9.0).sin() * (fy * 7.0).cos(),
        ];
        Rgb(std::array::from_fn(|c| {
            let r = ((state >> (c * 16)) & 0xFFFF) as f32 / 65535.0 * 2.0 - 1.0;
            (base[c] + r * f32::from(noise)).clamp(0.0, 255.0) as u8
        }))
    })
}

fn jpeg(img: &RgbImage, quality: u8) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    img.write_with_encoder(JpegEncoder::new_with_quality(&mut out, quality))?;
    Ok(out)
}

fn png(img: &RgbImage) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    img.write_with_encoder(PngEncoder::new(&mut out))?;
    Ok(out)
}
