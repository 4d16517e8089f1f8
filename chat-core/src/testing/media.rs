//! Media fixtures: small files of every allowed type (and a few refused
//! ones), generated in code, for the tests of
//! [`media::process`](crate::media::process) and for black-box server tests.
//!
//! Every function is pure and returns the whole file. Nothing is downloaded.
//! The audio fixtures carry silence or noise-free placeholder packets: they
//! are valid containers with exact durations, not meant to be played.

use std::io::Cursor;

use image::{
    Delay, Frame, ImageEncoder, Rgb, RgbImage, Rgba, RgbaImage,
    codecs::{
        gif::{GifEncoder, Repeat},
        jpeg::JpegEncoder,
        png::PngEncoder,
        webp::WebPEncoder,
    },
};

/// Left half of [`jpeg_with_gps_exif`]'s picture (before orientation).
pub const LEFT_COLOUR: [u8; 3] = [220, 20, 20];
/// Right half of [`jpeg_with_gps_exif`]'s picture (before orientation).
pub const RIGHT_COLOUR: [u8; 3] = [20, 20, 220];

/// The GPSLatitude value (three little-endian rationals: 52/1, 31/1,
/// 1234/100) as stored in [`jpeg_with_gps_exif`]'s EXIF block. A processed
/// image must not contain these bytes.
pub const GPS_LATITUDE: [u8; 24] = [
    52, 0, 0, 0, 1, 0, 0, 0, 31, 0, 0, 0, 1, 0, 0, 0, 0xD2, 0x04, 0, 0, 100, 0, 0, 0,
];

/// A JPEG of `width`×`height` whose left half is [`LEFT_COLOUR`] and right
/// half [`RIGHT_COLOUR`], with an APP1 `Exif` segment right after SOI that
/// holds an Orientation tag (`orientation`, 1..=8) and a GPS IFD
/// (GPSVersionID, GPSLatitudeRef/GPSLatitude, GPSLongitudeRef/GPSLongitude).
///
/// With orientation 6 (rotate 90° clockwise to display), the upright picture
/// is `height`×`width`, its top half left colour and its bottom half right.
pub fn jpeg_with_gps_exif(width: u32, height: u32, orientation: u16) -> Vec<u8> {
    let img = RgbImage::from_fn(width, height, |x, _| {
        if x < width / 2 {
            Rgb(LEFT_COLOUR)
        } else {
            Rgb(RIGHT_COLOUR)
        }
    });
    let mut jpeg = Vec::new();
    JpegEncoder::new_with_quality(&mut jpeg, 95)
        .write_image(img.as_raw(), width, height, image::ExtendedColorType::Rgb8)
        .unwrap_or_else(|e| panic!("encode jpeg fixture: {e}"));

    let tiff = exif_tiff(orientation);
    let mut app1 = Vec::with_capacity(tiff.len() + 10);
    app1.extend_from_slice(&[0xFF, 0xE1]);
    let len = u16::try_from(2 + 6 + tiff.len()).unwrap_or(u16::MAX);
    app1.extend_from_slice(&len.to_be_bytes());
    app1.extend_from_slice(b"Exif\0\0");
    app1.extend_from_slice(&tiff);

    let mut out = Vec::with_capacity(jpeg.len() + app1.len());
    out.extend_from_slice(&jpeg[..2]); // SOI
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// A little-endian TIFF block: IFD0 with Orientation and a GPS IFD pointer,
/// then the GPS IFD and its rationals.
fn exif_tiff(orientation: u16) -> Vec<u8> {
    fn entry(t: &mut Vec<u8>, tag: u16, typ: u16, count: u32, value: [u8; 4]) {
        t.extend_from_slice(&tag.to_le_bytes());
        t.extend_from_slice(&typ.to_le_bytes());
        t.extend_from_slice(&count.to_le_bytes());
        t.extend_from_slice(&value);
    }
    const IFD0: u32 = 8;
    const GPS_IFD: u32 = IFD0 + 2 + 2 * 12 + 4; // 38
    const LAT: u32 = GPS_IFD + 2 + 5 * 12 + 4; // 104
    const LON: u32 = LAT + 24; // 128

    let mut t = Vec::with_capacity(152);
    t.extend_from_slice(b"II*\0");
    t.extend_from_slice(&IFD0.to_le_bytes());
    // IFD0
    t.extend_from_slice(&2u16.to_le_bytes());
    let o = orientation.to_le_bytes();
    entry(&mut t, 0x0112, 3, 1, [o[0], o[1], 0, 0]); // Orientation, SHORT
    entry(&mut t, 0x8825, 4, 1, GPS_IFD.to_le_bytes()); // GPSInfo IFD pointer
    t.extend_from_slice(&0u32.to_le_bytes());
    // GPS IFD
    t.extend_from_slice(&5u16.to_le_bytes());
    entry(&mut t, 0x0000, 1, 4, [2, 2, 0, 0]); // GPSVersionID
    entry(&mut t, 0x0001, 2, 2, *b"N\0\0\0"); // GPSLatitudeRef
    entry(&mut t, 0x0002, 5, 3, LAT.to_le_bytes()); // GPSLatitude
    entry(&mut t, 0x0003, 2, 2, *b"E\0\0\0"); // GPSLongitudeRef
    entry(&mut t, 0x0004, 5, 3, LON.to_le_bytes()); // GPSLongitude
    t.extend_from_slice(&0u32.to_le_bytes());
    t.extend_from_slice(&GPS_LATITUDE);
    for (n, d) in [(13u32, 1u32), (24, 1), (5678, 100)] {
        t.extend_from_slice(&n.to_le_bytes());
        t.extend_from_slice(&d.to_le_bytes());
    }
    t
}

/// A PNG whose IHDR (with a correct CRC) declares `width`×`height` RGBA
/// pixels, followed by a tiny IDAT: a decompression-bomb header that must be
/// refused before any pixel buffer is allocated.
pub fn png_declaring(width: u32, height: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 6, 0, 0, 0]); // 8-bit RGBA, deflate, no filter, no interlace
    png_chunk(&mut out, b"IHDR", &ihdr);
    // zlib stream: one final stored block holding a single zero byte.
    png_chunk(
        &mut out,
        b"IDAT",
        &[
            0x78, 0x01, 0x01, 0x01, 0x00, 0xFE, 0xFF, 0x00, 0x00, 0x01, 0x00, 0x01,
        ],
    );
    png_chunk(&mut out, b"IEND", &[]);
    out
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32_ieee(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// CRC-32 as PNG and zip use it (reflected, polynomial 0xEDB88320).
fn crc32_ieee(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A colour gradient, opaque or with an alpha gradient.
fn gradient(width: u32, height: u32, alpha: bool) -> RgbaImage {
    RgbaImage::from_fn(width, height, |x, y| {
        let r = (x * 255 / width.max(1)) as u8;
        let g = (y * 255 / height.max(1)) as u8;
        let a = if alpha {
            ((x + y) * 255 / (width + height).max(1)) as u8
        } else {
            255
        };
        Rgba([r, g, 128, a])
    })
}

/// A valid RGBA PNG of `width`×`height` (opaque gradient).
pub fn png(width: u32, height: u32) -> Vec<u8> {
    let img = gradient(width, height, false);
    let mut out = Vec::new();
    PngEncoder::new(&mut out)
        .write_image(img.as_raw(), width, height, image::ExtendedColorType::Rgba8)
        .unwrap_or_else(|e| panic!("encode png fixture: {e}"));
    out
}

/// A valid lossless WebP of `width`×`height`; with `alpha`, its alpha
/// channel varies (so it is kept), else it is opaque RGB.
pub fn webp_lossless(width: u32, height: u32, alpha: bool) -> Vec<u8> {
    let img = gradient(width, height, alpha);
    let mut out = Vec::new();
    if alpha {
        WebPEncoder::new_lossless(&mut out)
            .write_image(img.as_raw(), width, height, image::ExtendedColorType::Rgba8)
            .unwrap_or_else(|e| panic!("encode webp fixture: {e}"));
    } else {
        let rgb = image::DynamicImage::ImageRgba8(img).to_rgb8();
        WebPEncoder::new_lossless(&mut out)
            .write_image(rgb.as_raw(), width, height, image::ExtendedColorType::Rgb8)
            .unwrap_or_else(|e| panic!("encode webp fixture: {e}"));
    }
    out
}

/// A looping 32×24 GIF of `frames` frames (100 ms each), each a different
/// solid colour. `gif_animated(1)` is a still GIF.
pub fn gif_animated(frames: u32) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = GifEncoder::new_with_speed(Cursor::new(&mut out), 10);
        enc.set_repeat(Repeat::Infinite)
            .unwrap_or_else(|e| panic!("gif repeat: {e}"));
        for i in 0..frames {
            let c = (i * 40 % 256) as u8;
            let buf = RgbaImage::from_pixel(32, 24, Rgba([c, 255 - c, 64, 255]));
            let frame = Frame::from_parts(buf, 0, 0, Delay::from_numer_denom_ms(100, 1));
            enc.encode_frame(frame)
                .unwrap_or_else(|e| panic!("encode gif fixture: {e}"));
        }
    }
    out
}

// --- Audio -------------------------------------------------------------------

/// The Ogg CRC-32 (polynomial 0x04C11DB7, initial 0, not reflected), for
/// tests that build or alter Ogg pages.
pub fn ogg_crc(data: &[u8]) -> u32 {
    let mut crc = 0u32;
    for &b in data {
        crc ^= u32::from(b) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04C1_1DB7
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// One Ogg page holding whole `packets` (each under 255 × 255 bytes).
fn ogg_page(flags: u8, granule: i64, serial: u32, seq: u32, packets: &[&[u8]]) -> Vec<u8> {
    let mut lacing = Vec::new();
    for p in packets {
        let mut n = p.len();
        while n >= 255 {
            lacing.push(255u8);
            n -= 255;
        }
        lacing.push(n as u8);
    }
    let mut page = Vec::new();
    page.extend_from_slice(b"OggS");
    page.push(0);
    page.push(flags);
    page.extend_from_slice(&granule.to_le_bytes());
    page.extend_from_slice(&serial.to_le_bytes());
    page.extend_from_slice(&seq.to_le_bytes());
    page.extend_from_slice(&[0; 4]); // CRC, filled below
    page.push(lacing.len() as u8);
    page.extend_from_slice(&lacing);
    for p in packets {
        page.extend_from_slice(p);
    }
    let crc = ogg_crc(&page);
    page[22..26].copy_from_slice(&crc.to_le_bytes());
    page
}

/// An Ogg Opus file of `duration_ms` (mono, 20 ms packets) with the given
/// pre-skip: a BOS page with OpusHead, a page with OpusTags, then audio pages
/// of up to 50 packets each, granules advancing by 960 per packet; the last
/// page has the EOS flag and granule `pre_skip + duration_ms * 48`. Every
/// page has a correct CRC.
pub fn ogg_opus(duration_ms: u32, pre_skip: u16) -> Vec<u8> {
    const SERIAL: u32 = 0x5EED_0001;
    let mut head = b"OpusHead".to_vec();
    head.push(1); // version
    head.push(1); // channels
    head.extend_from_slice(&pre_skip.to_le_bytes());
    head.extend_from_slice(&48_000u32.to_le_bytes());
    head.extend_from_slice(&0i16.to_le_bytes());
    head.push(0); // mapping family
    let mut tags = b"OpusTags".to_vec();
    let vendor = b"chat-core fixtures";
    tags.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
    tags.extend_from_slice(vendor);
    tags.extend_from_slice(&0u32.to_le_bytes());

    let mut out = ogg_page(0x02, 0, SERIAL, 0, &[&head]);
    out.extend(ogg_page(0x00, 0, SERIAL, 1, &[&tags]));

    // TOC 0xF8: config 31 (CELT FB, 20 ms), mono, one frame; then a few
    // bytes of (meaningless) frame data.
    let packet: &[u8] = &[0xF8, 0xFF, 0xFE, 0x01, 0x02, 0x03];
    let n_packets = duration_ms.div_ceil(20).max(1);
    let end_granule = i64::from(pre_skip) + i64::from(duration_ms) * 48;
    let mut sent = 0u32;
    let mut seq = 2;
    while sent < n_packets {
        let here = (n_packets - sent).min(50);
        sent += here;
        let last = sent == n_packets;
        let granule = if last {
            end_granule
        } else {
            i64::from(pre_skip) + i64::from(sent) * 960
        };
        let packets = vec![packet; here as usize];
        out.extend(ogg_page(
            if last { 0x04 } else { 0x00 },
            granule,
            SERIAL,
            seq,
            &packets,
        ));
        seq += 1;
    }
    out
}

/// An MPEG-1 Layer III file, 44.1 kHz, 128 kbit/s, mono, of
/// `round(duration_ms * 44.1 / 1152)` frames (1152 samples each) of
/// silence: headers `FF FB 90 C4`, 417-byte frames with zeroed side
/// information and main data. No ID3 tag and no Xing header.
pub fn mp3_cbr(duration_ms: u32) -> Vec<u8> {
    let frames = (u64::from(duration_ms) * 44_100 + 576_000) / 1_152_000;
    let mut out = Vec::with_capacity(frames as usize * 417);
    for _ in 0..frames {
        out.extend_from_slice(&[0xFF, 0xFB, 0x90, 0xC4]);
        out.extend_from_slice(&[0; 413]);
    }
    out
}

/// The exact duration of [`mp3_cbr`]`(duration_ms)` in milliseconds.
pub fn mp3_cbr_exact_ms(duration_ms: u32) -> f64 {
    let frames = (u64::from(duration_ms) * 44_100 + 576_000) / 1_152_000;
    frames as f64 * 1152.0 * 1000.0 / 44_100.0
}

/// A RIFF/WAVE file, PCM 16-bit mono at `sample_rate`, of
/// `sample_rate * duration_ms / 1000` samples (a quiet sawtooth).
pub fn wav_pcm(duration_ms: u32, sample_rate: u32) -> Vec<u8> {
    let samples = u64::from(sample_rate) * u64::from(duration_ms) / 1000;
    let data_len = (samples * 2) as u32;
    let mut out = Vec::with_capacity(44 + data_len as usize);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&sample_rate.to_le_bytes());
    out.extend_from_slice(&(sample_rate * 2).to_le_bytes()); // byte rate
    out.extend_from_slice(&2u16.to_le_bytes()); // block align
    out.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for i in 0..samples {
        let s = ((i % 100) as i16 - 50) * 20;
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

// --- WebM ----------------------------------------------------------------------

/// An EBML element: a one-byte size when it fits (as muxers write small
/// elements, and as infer expects of DocType), else an eight-byte one.
fn ebml(id: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = id.to_vec();
    if body.len() < 0x7F {
        out.push(0x80 | body.len() as u8);
    } else {
        out.push(0x01);
        out.extend_from_slice(&(body.len() as u64).to_be_bytes()[1..]);
    }
    out.extend_from_slice(body);
    out
}

fn ebml_uint(id: &[u8], v: u64) -> Vec<u8> {
    ebml(id, &v.to_be_bytes())
}

/// A WebM file with one Opus audio track (48 kHz mono) as browsers'
/// MediaRecorder writes it: Segment and Cluster of unknown size, no
/// Duration in Info, 20 ms SimpleBlocks up to `duration_ms`. With `video`, a
/// second track (VP8 video) is declared too.
pub fn webm_opus(duration_ms: u32, video: bool) -> Vec<u8> {
    let mut head = Vec::new();
    head.extend(ebml_uint(&[0x42, 0x86], 1)); // EBMLVersion
    head.extend(ebml_uint(&[0x42, 0xF7], 1)); // EBMLReadVersion
    head.extend(ebml_uint(&[0x42, 0xF2], 4)); // EBMLMaxIDLength
    head.extend(ebml_uint(&[0x42, 0xF3], 8)); // EBMLMaxSizeLength
    head.extend(ebml(&[0x42, 0x82], b"webm")); // DocType
    head.extend(ebml_uint(&[0x42, 0x87], 4)); // DocTypeVersion
    head.extend(ebml_uint(&[0x42, 0x85], 2)); // DocTypeReadVersion
    let mut out = ebml(&[0x1A, 0x45, 0xDF, 0xA3], &head);

    // Segment of unknown size.
    out.extend_from_slice(&[
        0x18, 0x53, 0x80, 0x67, 0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
    ]);
    let mut info = ebml_uint(&[0x2A, 0xD7, 0xB1], 1_000_000); // TimestampScale: 1 ms
    info.extend(ebml(&[0x4D, 0x80], b"chat-core fixtures")); // MuxingApp
    info.extend(ebml(&[0x57, 0x41], b"chat-core fixtures")); // WritingApp
    out.extend(ebml(&[0x15, 0x49, 0xA9, 0x66], &info));

    let mut opus_head = b"OpusHead".to_vec();
    opus_head.extend_from_slice(&[1, 1, 0x38, 0x01, 0x80, 0xBB, 0, 0, 0, 0, 0]);
    let mut audio = ebml(&[0xB5], &48_000f64.to_be_bytes()); // SamplingFrequency
    audio.extend(ebml_uint(&[0x9F], 1)); // Channels
    let mut track = ebml_uint(&[0xD7], 1); // TrackNumber
    track.extend(ebml_uint(&[0x73, 0xC5], 1)); // TrackUID
    track.extend(ebml_uint(&[0x83], 2)); // TrackType: audio
    track.extend(ebml(&[0x86], b"A_OPUS")); // CodecID
    track.extend(ebml(&[0x63, 0xA2], &opus_head)); // CodecPrivate
    track.extend(ebml(&[0xE1], &audio)); // Audio
    let mut tracks = ebml(&[0xAE], &track);
    if video {
        let mut v = ebml_uint(&[0xB0], 64); // PixelWidth
        v.extend(ebml_uint(&[0xBA], 48)); // PixelHeight
        let mut track = ebml_uint(&[0xD7], 2);
        track.extend(ebml_uint(&[0x73, 0xC5], 2));
        track.extend(ebml_uint(&[0x83], 1)); // TrackType: video
        track.extend(ebml(&[0x86], b"V_VP8"));
        track.extend(ebml(&[0xE0], &v)); // Video
        tracks.extend(ebml(&[0xAE], &track));
    }
    out.extend(ebml(&[0x16, 0x54, 0xAE, 0x6B], &tracks));

    // One cluster of unknown size, timestamps relative to 0.
    out.extend_from_slice(&[
        0x1F, 0x43, 0xB6, 0x75, 0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
    ]);
    out.extend(ebml_uint(&[0xE7], 0)); // Timestamp
    let n = duration_ms.div_ceil(20).max(1);
    for i in 0..n {
        let ts = (i * 20) as i16;
        let mut block = vec![0x81]; // track 1
        block.extend_from_slice(&ts.to_be_bytes());
        block.push(0x80); // keyframe
        block.extend_from_slice(&[0xF8, 0xFF, 0xFE, 0x01, 0x02, 0x03]);
        out.extend(ebml(&[0xA3], &block)); // SimpleBlock
    }
    out
}

// --- Other types ----------------------------------------------------------------

/// A minimal 64-bit little-endian ELF header (x86-64 executable), padded
/// with zeros to 512 bytes: a type that must be refused whatever its name.
pub fn elf_bytes() -> Vec<u8> {
    let mut out = vec![0x7F, b'E', b'L', b'F', 2, 1, 1, 0];
    out.resize(16, 0);
    out.extend_from_slice(&2u16.to_le_bytes()); // e_type: EXEC
    out.extend_from_slice(&0x3Eu16.to_le_bytes()); // e_machine: x86-64
    out.extend_from_slice(&1u32.to_le_bytes()); // e_version
    out.resize(512, 0);
    out
}

/// A tiny one-page PDF.
pub fn pdf_bytes() -> Vec<u8> {
    b"%PDF-1.4\n\
1 0 obj <</Type /Catalog /Pages 2 0 R>> endobj\n\
2 0 obj <</Type /Pages /Kids [3 0 R] /Count 1>> endobj\n\
3 0 obj <</Type /Page /Parent 2 0 R /MediaBox [0 0 200 200]>> endobj\n\
trailer <</Root 1 0 R>>\n\
%%EOF\n"
        .to_vec()
}

/// A PDF of about `size` bytes (at least [`pdf_bytes`]'s) that holds
/// `marker` in a comment: tests look for the marker where plaintext must
/// not be.
pub fn pdf_padded(size: usize, marker: &str) -> Vec<u8> {
    let mut bytes = pdf_bytes();
    let mut pad = format!("\n% {marker} ").into_bytes();
    while bytes.len() + pad.len() < size {
        pad.push(b'x');
    }
    bytes.extend_from_slice(&pad);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crcs_match_known_values() {
        assert_eq!(crc32_ieee(b"123456789"), 0xCBF4_3926);
        // CRC-32/MPEG-2 without the final xor and with init 0 (Ogg's).
        assert_eq!(ogg_crc(b"123456789"), 0x89A1_897F);
    }
}
