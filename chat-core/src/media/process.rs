//! What the engine does with the bytes of an upload before it stores them:
//! find the type from the content ([`sniff`]), re-encode images without
//! metadata and make their thumbnails ([`process_image`]), measure voice
//! notes ([`voice_duration`]) and clean file names ([`sanitize_file_name`]).
//!
//! Everything here is synchronous and CPU- or file-bound: the engine runs it
//! inside `tokio::task::spawn_blocking`, on a temporary file that already
//! holds the whole upload (at most [`MediaLimits::largest`] bytes).
//!
//! # The allowlist (protocol section 5.1)
//!
//! | kind | recognized as | reported mime |
//! |---|---|---|
//! | image | JPEG, PNG, WebP, GIF | `image/jpeg`, `image/png`, `image/webp`, `image/gif` |
//! | voice | Ogg Opus | `audio/ogg` |
//! | voice | MP3 (ID3 tag or an `FF FB`/`FF F3`/`FF F2` frame at the start) | `audio/mpeg` |
//! | voice | MP4 with brand `M4A `, or `isom`/`mp42`/… (phones' voice notes) | `audio/mp4` |
//! | voice | RIFF/WAVE | `audio/wav` |
//! | voice | WebM | `audio/webm` |
//! | file | PDF | `application/pdf` |
//!
//! Everything else is [`Error::UnsupportedMediaType`], including Ogg
//! Vorbis/FLAC (the protocol names Ogg/Opus only), raw ADTS AAC (AAC is
//! accepted inside M4A), Matroska other than WebM, and MP4/WebM files that
//! turn out to hold a video (or any non-audio) track.
//!
//! # Errors
//!
//! - [`Error::UnsupportedMediaType`] (415): not on the allowlist.
//! - [`Error::TooLarge`] (413): over a [`MediaLimits`] limit that is checked
//!   here (pixels, animation frames).
//! - [`Error::InvalidInput`] (400): an allowed type whose content is broken
//!   (cannot be decoded or parsed).
//! - [`Error::Backend`] (500): the temporary file could not be read, or an
//!   encoder failed.
//!
//! No input makes these functions panic: they index nothing they have not
//! checked, and the third-party decoders run under
//! [`std::panic::catch_unwind`] so that a bug in one of them
//! becomes [`Error::InvalidInput`] instead of taking down a worker thread.

use std::{
    fs::File,
    io::{self, BufReader, Read, Seek, SeekFrom},
    panic::{AssertUnwindSafe, catch_unwind},
    time::Duration,
};

use image::{
    AnimationDecoder, DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits,
    codecs::{
        gif::{GifDecoder, GifEncoder, Repeat},
        jpeg::JpegEncoder,
        png::PngEncoder,
    },
    error::LimitErrorKind,
    imageops::FilterType,
    metadata::Orientation,
};
use symphonia::core::{
    codecs::CODEC_TYPE_NULL,
    errors::Error as SymphoniaError,
    formats::{FormatOptions, FormatReader},
    io::{MediaSourceStream, MediaSourceStreamOptions},
    meta::MetadataOptions,
    probe::Hint,
};

use crate::error::{Error, Result};

const MIB: u64 = 1024 * 1024;

// --- Kinds and limits --------------------------------------------------------

pub use crate::model::MediaKind;

/// Upload limits. [`Default`] gives the protocol's defaults: images 10 MiB
/// and 40 megapixels, voice notes 25 MiB and 5 minutes, files 25 MiB.
///
/// Byte limits are the caller's to enforce while receiving; the pixel limit
/// is enforced by [`process_image`]; the duration limit is checked by the
/// caller against [`voice_duration`]'s answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaLimits {
    /// Largest image upload, in bytes.
    pub image_bytes: u64,
    /// Most pixels (width × height) of an image; for an animated GIF, of all
    /// its frames together.
    pub image_pixels: u64,
    /// Largest voice note, in bytes.
    pub voice_bytes: u64,
    /// Longest voice note.
    pub voice_duration: Duration,
    /// Largest file upload, in bytes.
    pub file_bytes: u64,
}

impl Default for MediaLimits {
    fn default() -> Self {
        Self {
            image_bytes: 10 * MIB,
            image_pixels: 40_000_000,
            voice_bytes: 25 * MIB,
            voice_duration: Duration::from_secs(5 * 60),
            file_bytes: 25 * MIB,
        }
    }
}

impl MediaLimits {
    /// The byte limit for uploads of `kind`.
    pub fn max_bytes(&self, kind: MediaKind) -> u64 {
        match kind {
            MediaKind::Image => self.image_bytes,
            MediaKind::Voice => self.voice_bytes,
            MediaKind::File => self.file_bytes,
        }
    }

    /// The largest byte limit of any kind: what an upload may reach before
    /// its type is known.
    pub fn largest(&self) -> u64 {
        self.image_bytes.max(self.voice_bytes).max(self.file_bytes)
    }
}

// --- Sniffing ----------------------------------------------------------------

/// How many bytes from the start of an upload [`sniff`] wants. Fewer are
/// fine when the upload is shorter.
pub const SNIFF_BYTES: usize = 8192;

/// What [`sniff`] found: an allowed type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Sniffed {
    /// The kind, which decides limits and processing.
    pub kind: MediaKind,
    /// The canonical mime type (see the table in the module docs).
    pub mime: &'static str,
}

/// The type of an upload from its first bytes (up to [`SNIFF_BYTES`]),
/// never from a name or a client's claim.
///
/// Ogg is accepted only as Opus (`OpusHead` at the start of the first
/// packet); MP4 and WebM containers are accepted as voice here, and
/// [`voice_duration`] refuses those that hold video.
///
/// # Errors
///
/// [`Error::UnsupportedMediaType`] for anything outside the allowlist, with a
/// message naming what was found.
pub fn sniff(head: &[u8]) -> Result<Sniffed> {
    let head = head.get(..SNIFF_BYTES).unwrap_or(head);
    let Some(found) = infer::get(head) else {
        return Err(Error::UnsupportedMediaType(
            "unrecognized content; allowed: JPEG, PNG, WebP, GIF images, \
             Ogg Opus, MP3, M4A, WAV, WebM voice notes, PDF files"
                .to_owned(),
        ));
    };
    let (kind, mime) = match found.mime_type() {
        "image/jpeg" => (MediaKind::Image, "image/jpeg"),
        "image/png" => (MediaKind::Image, "image/png"),
        "image/webp" => (MediaKind::Image, "image/webp"),
        "image/gif" => (MediaKind::Image, "image/gif"),
        "audio/opus" => (MediaKind::Voice, "audio/ogg"),
        "audio/mpeg" => (MediaKind::Voice, "audio/mpeg"),
        "audio/m4a" | "video/mp4" => (MediaKind::Voice, "audio/mp4"),
        "audio/x-wav" => (MediaKind::Voice, "audio/wav"),
        "video/webm" => (MediaKind::Voice, "audio/webm"),
        "application/pdf" => (MediaKind::File, "application/pdf"),
        "audio/ogg" => {
            return Err(Error::UnsupportedMediaType(
                "Ogg audio other than Opus is not allowed".to_owned(),
            ));
        }
        other => {
            return Err(Error::UnsupportedMediaType(format!(
                "{other} is not allowed"
            )));
        }
    };
    Ok(Sniffed { kind, mime })
}

// --- Images ------------------------------------------------------------------

/// A re-encoded image and its thumbnail. Neither carries any metadata
/// (EXIF, XMP, ICC, comments) of the upload.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProcessedImage {
    /// The re-encoded image.
    pub bytes: Vec<u8>,
    /// Its type: `image/jpeg`, `image/png` or `image/gif`.
    pub mime: &'static str,
    /// Width in pixels, upright (after the EXIF orientation was applied).
    pub width: u32,
    /// Height in pixels, upright.
    pub height: u32,
    /// A JPEG whose longer side is at most 320 px (never upscaled).
    pub thumbnail: Vec<u8>,
    /// The thumbnail's type: `image/jpeg`.
    pub thumbnail_mime: &'static str,
}

impl std::fmt::Debug for ProcessedImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessedImage")
            .field("bytes", &self.bytes.len())
            .field("mime", &self.mime)
            .field("width", &self.width)
            .field("height", &self.height)
            .field("thumbnail", &self.thumbnail.len())
            .field("thumbnail_mime", &self.thumbnail_mime)
            .finish()
    }
}

/// The longer side of a thumbnail, at most.
pub const THUMBNAIL_SIDE: u32 = 320;
/// JPEG quality of re-encoded JPEG (and opaque WebP) images.
const JPEG_QUALITY: u8 = 85;
/// JPEG quality of thumbnails.
const THUMBNAIL_QUALITY: u8 = 80;
/// Longest side accepted, checked by the decoders on the header alone.
/// Past what JPEG, GIF and WebP can express (65 535 or less); it bounds PNG,
/// whose header allows 2^31. Width × height is checked against
/// [`MediaLimits::image_pixels`] right after.
const MAX_SIDE: u32 = 65_535;
/// Most frames of an animated GIF, whatever their size.
const MAX_GIF_FRAMES: u64 = 2_000;
/// Speed of the GIF encoder's colour quantizer (1 best .. 30 fastest).
const GIF_SPEED: i32 = 10;

/// Decodes the image in `file` as the type `sniffed_mime` (from [`sniff`],
/// not guessed again), applies its EXIF orientation, and re-encodes it
/// without metadata, with a thumbnail.
///
/// - JPEG → JPEG (quality 85); PNG → PNG; WebP → PNG if it has an alpha
///   channel, else JPEG (image's WebP encoder is lossless only, too big for
///   photos).
/// - GIF: animated (two frames or more) → animated GIF, every frame
///   re-encoded, looping forever; a single frame → PNG (lossless; a GIF
///   re-encode would quantize the palette again). The thumbnail is of the
///   first frame.
/// - 16-bit and float images are brought to 8 bits per channel.
///
/// Limits are set before any pixel is decoded: a header declaring more than
/// 65 535 px on a side is refused by the decoder, and one declaring more than
/// `limits.image_pixels` is refused right after the header is read, so a
/// decompression bomb allocates nothing. The decoders' own allocation budget
/// (`max_alloc`) is `image_pixels × 8` (the decoded buffer at 16 bits × 4
/// channels, the largest layout) plus 64 MiB for their working buffers:
/// 384 MiB at the default 40 megapixels, under image's 512 MiB default.
///
/// # Errors
///
/// [`Error::UnsupportedMediaType`] if `sniffed_mime` is not an allowed image
/// type; [`Error::TooLarge`] over the pixel or frame limits;
/// [`Error::InvalidInput`] if the content cannot be decoded;
/// [`Error::Backend`] if the file cannot be read or an encoder fails.
pub fn process_image(
    file: &mut File,
    sniffed_mime: &str,
    limits: &MediaLimits,
) -> Result<ProcessedImage> {
    let format = match sniffed_mime {
        "image/jpeg" => ImageFormat::Jpeg,
        "image/png" => ImageFormat::Png,
        "image/webp" => ImageFormat::WebP,
        "image/gif" => ImageFormat::Gif,
        other => {
            return Err(Error::UnsupportedMediaType(format!(
                "{other} is not an allowed image type"
            )));
        }
    };
    file.seek(SeekFrom::Start(0)).map_err(Error::backend)?;
    let reader = BufReader::new(file);
    guarded("image", || {
        if format == ImageFormat::Gif {
            process_gif(reader, limits)
        } else {
            process_still(reader, format, limits)
        }
    })
}

/// Runs `f`, turning a panic inside a third-party decoder into
/// [`Error::InvalidInput`].
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        tracing::error!("the {what} decoder panicked on an upload");
        Err(Error::invalid(format!("the {what} could not be decoded")))
    })
}

/// The decoders' limits for `limits`.
fn decoder_limits(limits: &MediaLimits) -> Limits {
    let mut l = Limits::default();
    l.max_image_width = Some(MAX_SIDE);
    l.max_image_height = Some(MAX_SIDE);
    l.max_alloc = Some(max_alloc(limits));
    l
}

fn max_alloc(limits: &MediaLimits) -> u64 {
    limits
        .image_pixels
        .saturating_mul(8)
        .saturating_add(64 * MIB)
}

/// Refuses `width × height` over the pixel limit.
fn check_pixels(width: u32, height: u32, limits: &MediaLimits) -> Result<()> {
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.image_pixels {
        return Err(Error::TooLarge(format!(
            "image has {} megapixels ({width}x{height}), at most {}",
            megapixels(pixels),
            megapixels(limits.image_pixels)
        )));
    }
    Ok(())
}

/// `n` pixels in megapixels, rounded up to one decimal when not whole.
fn megapixels(n: u64) -> String {
    let tenths = n.div_ceil(100_000);
    if tenths % 10 == 0 {
        format!("{}", tenths / 10)
    } else {
        format!("{}.{}", tenths / 10, tenths % 10)
    }
}

fn image_error(e: ImageError) -> Error {
    match e {
        ImageError::Limits(l) => match l.kind() {
            LimitErrorKind::DimensionError => {
                Error::TooLarge(format!("image is wider or taller than {MAX_SIDE} pixels"))
            }
            LimitErrorKind::InsufficientMemory => {
                Error::TooLarge("image needs too much memory to decode".to_owned())
            }
            _ => Error::TooLarge(format!("image over a limit: {l}")),
        },
        ImageError::IoError(io) => match io.kind() {
            io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData => {
                Error::invalid(format!("the image could not be decoded: {io}"))
            }
            _ => Error::backend(io),
        },
        ImageError::Encoding(_) => Error::backend(e),
        other => Error::invalid(format!("the image could not be decoded: {other}")),
    }
}

fn process_still(
    reader: BufReader<&mut File>,
    format: ImageFormat,
    limits: &MediaLimits,
) -> Result<ProcessedImage> {
    let mut reader = ImageReader::with_format(reader, format);
    reader.limits(decoder_limits(limits));
    // Reads the header only; refuses sides over MAX_SIDE.
    let mut decoder = reader.into_decoder().map_err(image_error)?;
    let (w, h) = decoder.dimensions();
    check_pixels(w, h, limits)?;
    if decoder.total_bytes() > max_alloc(limits) {
        return Err(Error::TooLarge(
            "image needs too much memory to decode".to_owned(),
        ));
    }
    // A broken EXIF block is not worth refusing the picture for.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let img = DynamicImage::from_decoder(decoder).map_err(image_error)?;
    let mut img = to_8bit(img);
    img.apply_orientation(orientation);

    let (bytes, mime) = match format {
        ImageFormat::Png => (encode_png(&img)?, "image/png"),
        ImageFormat::WebP if img.color().has_alpha() => (encode_png(&img)?, "image/png"),
        _ => (encode_jpeg(&img, JPEG_QUALITY)?, "image/jpeg"),
    };
    Ok(ProcessedImage {
        bytes,
        mime,
        width: img.width(),
        height: img.height(),
        thumbnail: thumbnail(&img)?,
        thumbnail_mime: "image/jpeg",
    })
}

fn process_gif(reader: BufReader<&mut File>, limits: &MediaLimits) -> Result<ProcessedImage> {
    let mut decoder = GifDecoder::new(reader).map_err(image_error)?;
    decoder
        .set_limits(decoder_limits(limits))
        .map_err(image_error)?;
    let (w, h) = decoder.dimensions();
    check_pixels(w, h, limits)?;
    let frame_pixels = (u64::from(w) * u64::from(h)).max(1);
    let mut frames = decoder.into_frames();
    let first = match frames.next() {
        Some(frame) => frame.map_err(image_error)?,
        None => return Err(Error::invalid("the GIF has no frames")),
    };
    let Some(second) = frames.next() else {
        // A still GIF: lossless PNG.
        let img = DynamicImage::ImageRgba8(first.into_buffer());
        return Ok(ProcessedImage {
            bytes: encode_png(&img)?,
            mime: "image/png",
            width: w,
            height: h,
            thumbnail: thumbnail(&img)?,
            thumbnail_mime: "image/jpeg",
        });
    };
    let second = second.map_err(image_error)?;
    let thumb = thumbnail(&DynamicImage::ImageRgba8(first.buffer().clone()))?;

    let mut out = Vec::new();
    {
        let mut encoder = GifEncoder::new_with_speed(&mut out, GIF_SPEED);
        encoder
            .set_repeat(Repeat::Infinite)
            .map_err(Error::backend)?;
        let mut count = 0u64;
        for frame in [Ok(first), Ok(second)].into_iter().chain(frames) {
            let frame = frame.map_err(image_error)?;
            count += 1;
            if count > MAX_GIF_FRAMES {
                return Err(Error::TooLarge(format!(
                    "animation has more than {MAX_GIF_FRAMES} frames"
                )));
            }
            if count.saturating_mul(frame_pixels) > limits.image_pixels {
                return Err(Error::TooLarge(format!(
                    "animation has more than {} megapixels in all its frames",
                    megapixels(limits.image_pixels)
                )));
            }
            encoder.encode_frame(frame).map_err(Error::backend)?;
        }
    }
    Ok(ProcessedImage {
        bytes: out,
        mime: "image/gif",
        width: w,
        height: h,
        thumbnail: thumb,
        thumbnail_mime: "image/jpeg",
    })
}

/// 16-bit and float images as 8 bits per channel; others unchanged.
fn to_8bit(img: DynamicImage) -> DynamicImage {
    match img {
        DynamicImage::ImageLuma8(_)
        | DynamicImage::ImageLumaA8(_)
        | DynamicImage::ImageRgb8(_)
        | DynamicImage::ImageRgba8(_) => img,
        DynamicImage::ImageLuma16(_) => DynamicImage::ImageLuma8(img.to_luma8()),
        DynamicImage::ImageLumaA16(_) => DynamicImage::ImageLumaA8(img.to_luma_alpha8()),
        other if other.color().has_alpha() => DynamicImage::ImageRgba8(other.to_rgba8()),
        other => DynamicImage::ImageRgb8(other.to_rgb8()),
    }
}

fn encode_png(img: &DynamicImage) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    img.write_with_encoder(PngEncoder::new(&mut out))
        .map_err(Error::backend)?;
    Ok(out)
}

/// JPEG of `img`: grey stays grey, anything else becomes RGB (an alpha
/// channel is flattened onto white first).
fn encode_jpeg(img: &DynamicImage, quality: u8) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let encoder = JpegEncoder::new_with_quality(&mut out, quality);
    let result = match img {
        DynamicImage::ImageLuma8(_) | DynamicImage::ImageRgb8(_) => img.write_with_encoder(encoder),
        _ if img.color().has_alpha() => {
            DynamicImage::ImageRgb8(flatten_on_white(img)).write_with_encoder(encoder)
        }
        _ => DynamicImage::ImageRgb8(img.to_rgb8()).write_with_encoder(encoder),
    };
    result.map_err(Error::backend)?;
    Ok(out)
}

/// `img` as RGB, its alpha composited onto white.
fn flatten_on_white(img: &DynamicImage) -> image::RgbImage {
    let rgba = img.to_rgba8();
    image::RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let image::Rgba([r, g, b, a]) = *rgba.get_pixel(x, y);
        let over = |c: u8| -> u8 {
            let c = u16::from(c) * u16::from(a) + 255 * (255 - u16::from(a));
            ((c + 127) / 255) as u8
        };
        image::Rgb([over(r), over(g), over(b)])
    })
}

/// A JPEG fitting in [`THUMBNAIL_SIDE`]², aspect ratio kept, never upscaled.
fn thumbnail(img: &DynamicImage) -> Result<Vec<u8>> {
    if img.width() <= THUMBNAIL_SIDE && img.height() <= THUMBNAIL_SIDE {
        encode_jpeg(img, THUMBNAIL_QUALITY)
    } else {
        let small = img.resize(THUMBNAIL_SIDE, THUMBNAIL_SIDE, FilterType::Triangle);
        encode_jpeg(&small, THUMBNAIL_QUALITY)
    }
}

// --- Voice notes -------------------------------------------------------------

/// The largest possible Ogg page: 27 + 255 lacing values + 255 × 255.
const MAX_OGG_PAGE: usize = 27 + 255 + 255 * 255;
/// Most packets read when a container does not state its duration (a
/// 25 MiB file of the smallest MP3 frames has fewer).
const MAX_SCANNED_PACKETS: u64 = 4_000_000;

/// The duration of the voice note in `file`, of type `sniffed_mime` (from
/// [`sniff`]). Nothing is decoded; the caller compares the answer with
/// [`MediaLimits::voice_duration`].
///
/// - Ogg Opus: `(last granule position - pre-skip) / 48 kHz`, from the
///   OpusHead of the first page and the last valid page of the file (found
///   in its last 65 307 bytes: `OggS`, version 0, a length that ends at EOF
///   or a correct CRC, a granule that is not -1, the first page's serial).
/// - MP3, M4A, WAV, WebM: the container's frame count when it states one
///   (MP3 excepted: without a Xing header it is only an estimate), else the
///   end of the last packet of the audio track, demuxed without decoding.
///
/// The file is never held whole in memory: the checks of MP4 and WebM
/// sizes read headers through an 8 KiB buffer and seek over payloads, and
/// symphonia reads a clone of the handle through its own 64 KiB buffer.
/// The handle's position is left anywhere.
///
/// # Errors
///
/// [`Error::UnsupportedMediaType`] if `sniffed_mime` is not an allowed voice
/// type, if the container holds a video or other non-audio track, or if
/// the Ogg stream is chained or multiplexed; [`Error::InvalidInput`] if the
/// content cannot be parsed; [`Error::Backend`] if the file cannot be read.
pub fn voice_duration(file: &mut File, sniffed_mime: &str) -> Result<Duration> {
    let ext = match sniffed_mime {
        "audio/ogg" => return ogg_opus_duration(file),
        "audio/mpeg" => "mp3",
        "audio/mp4" => "m4a",
        "audio/wav" => "wav",
        "audio/webm" => "webm",
        other => {
            return Err(Error::UnsupportedMediaType(format!(
                "{other} is not an allowed voice note type"
            )));
        }
    };
    let len = file.metadata().map_err(Error::backend)?.len();
    // symphonia trusts declared sizes when it allocates; refuse those that
    // do not fit in the file before it sees them. The checks read headers
    // only, never the payload.
    match ext {
        "m4a" => check_mp4_sizes(&mut *file, len)?,
        "webm" => check_ebml_sizes(&mut *file, len)?,
        _ => {}
    }
    // symphonia reads the file through its own bounded buffer (64 KiB),
    // from a handle of its own (it wants a `'static` source).
    let mut source = file.try_clone().map_err(Error::backend)?;
    source.seek(SeekFrom::Start(0)).map_err(Error::backend)?;
    guarded("voice note", || {
        container_duration(source, sniffed_mime, ext)
    })
}

/// Capacity of the buffer through which the container checks read headers.
const HEADER_BUFFER: usize = 8 * 1024;

/// Small fields read at given offsets of a seekable input through a small
/// buffer, never the whole input. Hops within the buffer keep it
/// ([`BufReader::seek_relative`]); longer ones seek the input.
struct Fields<R> {
    inner: BufReader<R>,
    /// Where `inner` stands.
    pos: u64,
    /// Length of the input.
    len: u64,
}

impl<R: Read + Seek> Fields<R> {
    fn new(mut input: R, len: u64) -> Result<Self> {
        input.seek(SeekFrom::Start(0)).map_err(Error::backend)?;
        Ok(Self {
            inner: BufReader::with_capacity(HEADER_BUFFER, input),
            pos: 0,
            len,
        })
    }

    /// Fills `buf` from offset `at` and returns `true` if those bytes lie
    /// before `limit` (and the end of the input); `false`, reading nothing,
    /// if they do not.
    fn read_at(&mut self, at: u64, buf: &mut [u8], limit: u64) -> Result<bool> {
        let Some(end) = at.checked_add(buf.len() as u64) else {
            return Ok(false);
        };
        if end > limit.min(self.len) {
            return Ok(false);
        }
        if at != self.pos {
            let hop =
                i64::try_from(i128::from(at) - i128::from(self.pos)).map_err(Error::backend)?;
            self.inner.seek_relative(hop).map_err(Error::backend)?;
            self.pos = at;
        }
        self.inner.read_exact(buf).map_err(Error::backend)?;
        self.pos = end;
        Ok(true)
    }

    /// The byte at `at` if it lies before `limit` (and the end of the
    /// input).
    fn byte_at(&mut self, at: u64, limit: u64) -> Result<Option<u8>> {
        let mut b = [0u8];
        Ok(self.read_at(at, &mut b, limit)?.then_some(b[0]))
    }
}

/// Most MP4 boxes [`check_mp4_sizes`] walks: phones write a few dozen, and
/// metadata lists (`ilst`) a few hundred more at most.
const MAX_MP4_BOXES: u32 = 10_000;

fn too_big_inside(what: &str) -> Error {
    Error::invalid(format!(
        "the voice note is broken: {what} is larger than the file"
    ))
}

/// Checks that every box of an MP4 file, in the boxes symphonia reads, fits
/// in its parent, and that the sample tables' entry counts fit in their
/// boxes: symphonia allocates from these numbers before reading (an `stts`
/// declaring 2^32 entries would ask for 32 GiB and abort the process).
fn check_mp4_sizes<R: Read + Seek>(input: R, len: u64) -> Result<()> {
    const CONTAINERS: [&[u8; 4]; 13] = [
        b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts", b"dinf", b"udta", b"mvex", b"moof",
        b"traf", b"mfra", b"ilst",
    ];
    let broken = || too_big_inside("a box");
    let mut r = Fields::new(input, len)?;
    // (start, end, inside ilst) of the boxes whose children are to be walked.
    let mut todo = vec![(0u64, len, false)];
    // A voice note has a few dozen boxes; a file of millions of empty ones
    // would grow `todo` (and the time spent) with the upload's size.
    let mut boxes = 0u32;
    while let Some((mut pos, end, in_ilst)) = todo.pop() {
        while pos < end {
            boxes += 1;
            if boxes > MAX_MP4_BOXES {
                return Err(Error::invalid(format!(
                    "the voice note is broken: more than {MAX_MP4_BOXES} boxes"
                )));
            }
            let mut header = [0u8; 8];
            if !r.read_at(pos, &mut header, len)? {
                return Err(broken());
            }
            let [s0, s1, s2, s3, k0, k1, k2, k3] = header;
            let size32 = u32::from_be_bytes([s0, s1, s2, s3]);
            let kind = [k0, k1, k2, k3];
            let (size, header_len) = match size32 {
                0 => (end - pos, 8),
                1 => {
                    let mut large = [0u8; 8];
                    if !r.read_at(pos + 8, &mut large, len)? {
                        return Err(broken());
                    }
                    (u64::from_be_bytes(large), 16)
                }
                n => (u64::from(n), 8),
            };
            let box_end = pos
                .checked_add(size)
                .filter(|&e| e <= end && e >= pos + header_len)
                .ok_or_else(broken)?;
            let body_start = pos + header_len;
            let body_len = box_end - body_start;
            if matches!(&kind, b"stts" | b"co64" | b"stsc" | b"stco" | b"stsz") {
                // Version and flags, then the fields checked: the first 12
                // bytes of the body (fewer if it is shorter).
                let mut head = [0u8; 12];
                let body = &mut head[..usize::try_from(body_len.min(12)).unwrap_or(12)];
                if !r.read_at(body_start, body, box_end)? {
                    return Err(broken());
                }
                let body = &*body;
                // Entry counts of the sample tables (after version and flags):
                // (offset of the count, bytes per entry).
                let table = match &kind {
                    b"stts" | b"co64" => Some((4, 8)),
                    b"stsc" => Some((4, 12)),
                    b"stco" => Some((4, 4)),
                    b"stsz" if body.get(4..8).is_some_and(|z| z == [0; 4]) => Some((8, 4)),
                    _ => None,
                };
                if let Some((at, entry)) = table {
                    let count = body
                        .get(at..at + 4)
                        .map(|c| u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
                        .ok_or_else(|| too_big_inside("a sample table"))?;
                    if count * entry > body_len {
                        return Err(too_big_inside("a sample table"));
                    }
                }
            }
            if in_ilst || CONTAINERS.contains(&&kind) {
                todo.push((body_start, box_end, &kind == b"ilst"));
            } else if &kind == b"meta" {
                // A full box: version and flags before its children.
                todo.push(((body_start + 4).min(box_end), box_end, false));
            }
            pos = box_end;
        }
    }
    Ok(())
}

/// Master elements of Matroska whose children symphonia reads.
const EBML_MASTERS: [u32; 30] = [
    0x1A45_DFA3,
    0x1853_8067,
    0x114D_9B74,
    0x4DBB,
    0x1549_A966,
    0x1F43_B675,
    0xA0,
    0x75A1,
    0xA6,
    0x1654_AE6B,
    0xAE,
    0xE0,
    0xE1,
    0x6D80,
    0x6240,
    0x5035,
    0x47E7,
    0x55B0,
    0x55D0,
    0x1C53_BB6B,
    0xBB,
    0xB7,
    0x1043_A770,
    0x45B9,
    0xB6,
    0x80,
    0x1254_C367,
    0x7373,
    0x63C0,
    0x67C8,
];
/// Children of Segment: one of these closes an element of unknown size.
const EBML_TOP_LEVEL: [u32; 8] = [
    0x1F43_B675,
    0x1C53_BB6B,
    0x1254_C367,
    0x1043_A770,
    0x1549_A966,
    0x1654_AE6B,
    0x114D_9B74,
    0x1941_A469,
];
const EBML_SEGMENT: u32 = 0x1853_8067;

/// An EBML variable-size integer at `pos`, if it ends before `limit`:
/// (value, width, all value bits set, i.e. "unknown" for a size).
/// `keep_marker` for element IDs.
fn ebml_vint<R: Read + Seek>(
    r: &mut Fields<R>,
    pos: u64,
    limit: u64,
    keep_marker: bool,
) -> Result<Option<(u64, u64, bool)>> {
    let Some(first) = r.byte_at(pos, limit)? else {
        return Ok(None);
    };
    let width = first.leading_zeros() as usize + 1;
    if width > 8 {
        return Ok(None);
    }
    let mut rest = [0u8; 7];
    let rest = rest.get_mut(..width - 1).unwrap_or_default();
    if !r.read_at(pos + 1, rest, limit)? {
        return Ok(None);
    }
    let mask = (1u64 << (8 - width)) - 1;
    let mut v = u64::from(first) & mask;
    let mut all_ones = v == mask;
    for &b in rest.iter() {
        all_ones &= b == 0xFF;
        v = (v << 8) | u64::from(b);
    }
    if keep_marker {
        v |= 1u64 << (7 * width);
    }
    Ok(Some((v, width as u64, all_ones)))
}

/// Checks that every element of a WebM file fits in its parent (or the
/// file, for elements of unknown size) and that the frame sizes of laced
/// blocks fit in their block: symphonia allocates from these numbers
/// before reading.
fn check_ebml_sizes<R: Read + Seek>(input: R, len: u64) -> Result<()> {
    const MAX_DEPTH: usize = 16;
    let broken = || too_big_inside("an element");
    let mut r = Fields::new(input, len)?;
    // (id, end, of unknown size) of the open master elements.
    let mut open: Vec<(u32, u64, bool)> = Vec::new();
    let mut pos = 0u64;
    while pos < len {
        while open.last().is_some_and(|&(_, end, _)| end <= pos) {
            open.pop();
        }
        let (id, id_len, _) = ebml_vint(&mut r, pos, len, true)?.ok_or_else(broken)?;
        if id_len > 4 {
            return Err(broken());
        }
        let id = u32::try_from(id).map_err(|_| broken())?;
        // A top-level element closes the open elements of unknown size
        // (a Cluster of unknown size ends where the next one starts).
        if EBML_TOP_LEVEL.contains(&id) {
            while open
                .last()
                .is_some_and(|&(open_id, _, unknown)| unknown && open_id != EBML_SEGMENT)
            {
                open.pop();
            }
        }
        let parent_end = open.last().map_or(len, |&(_, end, _)| end);
        let (size, size_len, unknown) =
            ebml_vint(&mut r, pos + id_len, len, false)?.ok_or_else(broken)?;
        let data = pos + id_len + size_len;
        let master = EBML_MASTERS.contains(&id);
        let end = if unknown && master {
            parent_end
        } else {
            data.checked_add(size)
                .filter(|&e| e <= parent_end)
                .ok_or_else(broken)?
        };
        if master {
            if open.len() >= MAX_DEPTH {
                return Err(broken());
            }
            open.push((id, end, unknown));
            pos = data;
        } else {
            // SimpleBlock and Block.
            if id == 0xA3 || id == 0xA1 {
                check_lacing(&mut r, data, end)?;
            }
            pos = end;
        }
    }
    Ok(())
}

/// Frame sizes of the lacing of the (Simple)Block from `start` to `end`
/// must fit in the block.
fn check_lacing<R: Read + Seek>(r: &mut Fields<R>, start: u64, end: u64) -> Result<()> {
    let broken = || too_big_inside("a laced frame");
    let (_, track_len, _) = ebml_vint(r, start, end, false)?.ok_or_else(broken)?;
    let flags = r.byte_at(start + track_len + 2, end)?.ok_or_else(broken)?;
    let lacing = (flags >> 1) & 3;
    if lacing == 0 {
        return Ok(());
    }
    let mut pos = start + track_len + 3;
    let frames = usize::from(r.byte_at(pos, end)?.ok_or_else(broken)?) + 1;
    pos += 1;
    let limit = i64::try_from(end - start).map_err(|_| broken())?;
    match lacing {
        1 => {
            // Xiph: each size a run of 255s and a last byte.
            for _ in 1..frames {
                let mut size = 0i64;
                loop {
                    let b = r.byte_at(pos, end)?.ok_or_else(broken)?;
                    pos += 1;
                    size += i64::from(b);
                    if b != 255 {
                        break;
                    }
                }
                if size > limit {
                    return Err(broken());
                }
            }
        }
        3 => {
            // EBML: a first size, then signed differences.
            let (first, w, _) = ebml_vint(r, pos, end, false)?.ok_or_else(broken)?;
            pos += w;
            let mut size = i64::try_from(first).map_err(|_| broken())?;
            if size > limit {
                return Err(broken());
            }
            for _ in 2..frames {
                let (raw, w, _) = ebml_vint(r, pos, end, false)?.ok_or_else(broken)?;
                pos += w;
                let bias = (1i64 << (7 * w - 1)) - 1;
                let delta = i64::try_from(raw).map_err(|_| broken())? - bias;
                size = size.checked_add(delta).ok_or_else(broken)?;
                if !(0..=limit).contains(&size) {
                    return Err(broken());
                }
            }
        }
        _ => {}
    }
    Ok(())
}

fn parse_error(e: SymphoniaError) -> Error {
    match e {
        SymphoniaError::IoError(io)
            if !matches!(
                io.kind(),
                io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData
            ) =>
        {
            Error::backend(io)
        }
        SymphoniaError::Unsupported(what) => {
            Error::UnsupportedMediaType(format!("unsupported voice note: {what}"))
        }
        other => Error::invalid(format!("the voice note could not be parsed: {other}")),
    }
}

/// The duration of the voice note in `source`, read from its current
/// position (the start).
fn container_duration(source: File, mime: &str, ext: &str) -> Result<Duration> {
    let mss = MediaSourceStream::new(Box::new(source), MediaSourceStreamOptions::default());
    let mut hint = Hint::new();
    hint.with_extension(ext).mime_type(mime);
    let probed = symphonia::default::get_probe()
        .format(
            &hint,
            mss,
            &FormatOptions::default(),
            &MetadataOptions::default(),
        )
        .map_err(parse_error)?;
    let mut format = probed.format;

    let tracks = format.tracks();
    if tracks.is_empty() {
        return Err(Error::UnsupportedMediaType(
            "the voice note has no audio track".to_owned(),
        ));
    }
    // symphonia 0.5 knows audio codecs only: a video (or subtitle, data)
    // track has no codec and no sample rate.
    if tracks
        .iter()
        .any(|t| t.codec_params.codec == CODEC_TYPE_NULL || t.codec_params.sample_rate.is_none())
    {
        return Err(Error::UnsupportedMediaType(
            "a voice note must hold audio only, this file has a video or other track".to_owned(),
        ));
    }
    let Some(track) = format.default_track() else {
        return Err(Error::UnsupportedMediaType(
            "the voice note has no audio track".to_owned(),
        ));
    };
    let track_id = track.id;
    let Some(time_base) = track.codec_params.time_base else {
        return Err(Error::invalid("the voice note has no time base"));
    };
    let (numer, denom) = (time_base.numer, time_base.denom);
    let stated = track.codec_params.n_frames.filter(|&n| n > 0);
    let ticks = match stated {
        Some(n) if ext != "mp3" => n,
        _ => last_packet_end(format.as_mut(), track_id)?,
    };
    Ok(ticks_to_duration(ticks, numer, denom))
}

/// The end (ts + dur) of the last packet of `track_id`.
fn last_packet_end(format: &mut dyn FormatReader, track_id: u32) -> Result<u64> {
    let mut end = 0u64;
    let mut packets = 0u64;
    loop {
        match format.next_packet() {
            Ok(packet) => {
                packets += 1;
                if packets > MAX_SCANNED_PACKETS {
                    return Err(Error::invalid("the voice note has too many packets"));
                }
                if packet.track_id() == track_id {
                    end = end.max(packet.ts.saturating_add(packet.dur));
                }
            }
            Err(SymphoniaError::IoError(e)) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(parse_error(e)),
        }
    }
    if packets == 0 {
        return Err(Error::invalid("the voice note has no audio packets"));
    }
    Ok(end)
}

/// `ticks × numer / denom` seconds.
fn ticks_to_duration(ticks: u64, numer: u32, denom: u32) -> Duration {
    if denom == 0 {
        return Duration::ZERO;
    }
    let nanos = u128::from(ticks) * u128::from(numer) * 1_000_000_000 / u128::from(denom);
    let secs = u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX);
    Duration::new(secs, (nanos % 1_000_000_000) as u32)
}

/// An Ogg page header, parsed from the start of `buf`.
#[derive(Debug)]
struct OggPage {
    flags: u8,
    granule: i64,
    serial: u32,
    /// Offset of the body within `buf`.
    body_start: usize,
    /// Header plus body.
    len: usize,
}

/// Parses the page at the start of `buf` if its capture pattern, version
/// and length fit in `buf`.
fn ogg_page_at(buf: &[u8]) -> Option<OggPage> {
    if buf.get(..4)? != b"OggS" || *buf.get(4)? != 0 {
        return None;
    }
    let granule = i64::from_le_bytes(buf.get(6..14)?.try_into().ok()?);
    let serial = u32::from_le_bytes(buf.get(14..18)?.try_into().ok()?);
    let n = usize::from(*buf.get(26)?);
    let lacing = buf.get(27..27 + n)?;
    let body: usize = lacing.iter().map(|&l| usize::from(l)).sum();
    let len = 27 + n + body;
    if len > buf.len() {
        return None;
    }
    Some(OggPage {
        flags: *buf.get(5)?,
        granule,
        serial,
        body_start: 27 + n,
        len,
    })
}

/// The Ogg CRC-32 (polynomial 0x04C11DB7, initial 0, not reflected) of a
/// page, its CRC field taken as zero.
fn ogg_page_crc_ok(page: &[u8]) -> bool {
    let Some(stored) = page.get(22..26) else {
        return false;
    };
    let mut crc = 0u32;
    for (i, &b) in page.iter().enumerate() {
        let b = if (22..26).contains(&i) { 0 } else { b };
        crc ^= u32::from(b) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04C1_1DB7
            } else {
                crc << 1
            };
        }
    }
    stored == crc.to_le_bytes()
}

fn ogg_opus_duration(file: &mut File) -> Result<Duration> {
    let len = file.metadata().map_err(Error::backend)?.len();
    let window = usize::try_from(len).map_or(MAX_OGG_PAGE, |l| l.min(MAX_OGG_PAGE));

    // First page: BOS, one packet starting with OpusHead.
    file.seek(SeekFrom::Start(0)).map_err(Error::backend)?;
    let mut head = vec![0u8; window];
    file.read_exact(&mut head).map_err(Error::backend)?;
    let first = ogg_page_at(&head)
        .filter(|p| p.flags & 0x02 != 0)
        .ok_or_else(|| Error::invalid("the Ogg file does not start with a valid page"))?;
    let opus_head = head
        .get(first.body_start..first.len)
        .filter(|b| b.len() >= 19 && b.starts_with(b"OpusHead"))
        .ok_or_else(|| Error::UnsupportedMediaType("Ogg audio other than Opus".to_owned()))?;
    let pre_skip = opus_head
        .get(10..12)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .unwrap_or(0);

    // Last page: the last "OggS" that is a whole, valid page.
    file.seek(SeekFrom::End(-(window as i64)))
        .map_err(Error::backend)?;
    let mut tail = vec![0u8; window];
    file.read_exact(&mut tail).map_err(Error::backend)?;
    let mut last = None;
    for at in (0..tail.len().saturating_sub(26)).rev() {
        let Some(rest) = tail.get(at..) else { continue };
        let Some(page) = ogg_page_at(rest) else {
            continue;
        };
        let whole = rest.get(..page.len).unwrap_or(rest);
        if page.granule != -1 && (page.len == rest.len() || ogg_page_crc_ok(whole)) {
            last = Some(page);
            break;
        }
    }
    let last = last.ok_or_else(|| Error::invalid("the Ogg file has no valid last page"))?;
    if last.serial != first.serial {
        return Err(Error::UnsupportedMediaType(
            "chained or multiplexed Ogg streams are not allowed".to_owned(),
        ));
    }
    let samples = last
        .granule
        .checked_sub(i64::from(pre_skip))
        .and_then(|s| u64::try_from(s).ok())
        .ok_or_else(|| Error::invalid("the Ogg Opus file ends before its pre-skip"))?;
    Ok(ticks_to_duration(samples, 1, 48_000))
}

// --- File names --------------------------------------------------------------

/// Longest file name kept, in bytes.
const MAX_NAME_BYTES: usize = 255;

/// A file name safe to store and to show: the last path component only
/// (split on `/` and `\`), without control characters or any of
/// `" < > : * ? |`, without dots and spaces at either end, at most 255 bytes
/// (cut on a character boundary). `None` if nothing is left.
pub fn sanitize_file_name(name: &str) -> Option<String> {
    let last = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let cleaned: String = last
        .chars()
        .filter(|c| !c.is_control() && !matches!(c, '"' | '<' | '>' | ':' | '*' | '?' | '|'))
        .collect();
    let trimmed = cleaned.trim_matches(|c: char| c == '.' || c.is_whitespace());
    let mut end = trimmed.len().min(MAX_NAME_BYTES);
    while !trimmed.is_char_boundary(end) {
        end -= 1;
    }
    let cut = trimmed
        .get(..end)?
        .trim_end_matches(|c: char| c == '.' || c.is_whitespace());
    (!cut.is_empty()).then(|| cut.to_owned())
}

#[cfg(test)]
mod tests {
    use std::{
        io::{self, Read, Seek, SeekFrom, Write},
        time::Instant,
    };

    use proptest::prelude::*;

    use super::*;
    use crate::testing::media as fx;

    fn file_with(bytes: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap_or_else(|e| panic!("temp file: {e}"));
        f.write_all(bytes).unwrap_or_else(|e| panic!("write: {e}"));
        f.seek(SeekFrom::Start(0))
            .unwrap_or_else(|e| panic!("seek: {e}"));
        f
    }

    fn sniffed(bytes: &[u8]) -> Sniffed {
        sniff(bytes).unwrap_or_else(|e| panic!("sniff: {e}"))
    }

    fn image(bytes: &[u8]) -> Result<ProcessedImage> {
        let s = sniff(bytes)?;
        process_image(&mut file_with(bytes), s.mime, &MediaLimits::default())
    }

    fn duration(bytes: &[u8]) -> Result<Duration> {
        let s = sniff(bytes)?;
        voice_duration(&mut file_with(bytes), s.mime)
    }

    fn assert_ms(d: Duration, want_ms: f64) {
        let got = d.as_secs_f64() * 1000.0;
        assert!(
            (got - want_ms).abs() < 50.0,
            "got {got} ms, want {want_ms} ms"
        );
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    fn decode(bytes: &[u8]) -> DynamicImage {
        image::load_from_memory(bytes).unwrap_or_else(|e| panic!("decode output: {e}"))
    }

    #[test]
    fn sniffs_every_fixture() {
        let cases: Vec<(Vec<u8>, MediaKind, &str)> = vec![
            (
                fx::jpeg_with_gps_exif(64, 32, 1),
                MediaKind::Image,
                "image/jpeg",
            ),
            (fx::png(8, 8), MediaKind::Image, "image/png"),
            (
                fx::webp_lossless(8, 8, true),
                MediaKind::Image,
                "image/webp",
            ),
            (fx::gif_animated(3), MediaKind::Image, "image/gif"),
            (fx::ogg_opus(1000, 312), MediaKind::Voice, "audio/ogg"),
            (fx::mp3_cbr(1000), MediaKind::Voice, "audio/mpeg"),
            (fx::wav_pcm(100, 8000), MediaKind::Voice, "audio/wav"),
            (fx::webm_opus(1000, false), MediaKind::Voice, "audio/webm"),
            (fx::pdf_bytes(), MediaKind::File, "application/pdf"),
        ];
        for (bytes, kind, mime) in cases {
            let s = sniffed(&bytes);
            assert_eq!((s.kind, s.mime), (kind, mime));
            // Only the head is needed.
            let head = bytes.get(..SNIFF_BYTES).unwrap_or(&bytes);
            assert_eq!(sniffed(head), s);
        }
    }

    #[test]
    fn sniff_refuses_what_is_not_allowed() {
        // An ELF is an ELF whatever the client calls it ("cat.png").
        let err = sniff(&fx::elf_bytes()).err();
        assert!(
            matches!(&err, Some(Error::UnsupportedMediaType(m)) if m.contains("executable")),
            "{err:?}"
        );
        for bytes in [
            b"PK\x03\x04\x14\x00\x00\x00".to_vec(),
            b"<!DOCTYPE html><html></html>".to_vec(),
            b"just some text".to_vec(),
            Vec::new(),
        ] {
            assert!(
                matches!(sniff(&bytes), Err(Error::UnsupportedMediaType(_))),
                "{bytes:?}"
            );
        }
        // Ogg that is not Opus (a Vorbis identification header).
        let mut vorbis = fx::ogg_opus(100, 0);
        vorbis[28..36].copy_from_slice(b"\x01vorbis\0");
        assert!(matches!(
            sniff(&vorbis),
            Err(Error::UnsupportedMediaType(_))
        ));
    }

    #[test]
    fn kinds_and_limits() {
        assert_eq!(MediaKind::Voice.as_str(), "voice");
        assert_eq!(
            serde_json::to_string(&MediaKind::Image).ok().as_deref(),
            Some("\"image\"")
        );
        let l = MediaLimits::default();
        assert_eq!(l.max_bytes(MediaKind::Image), 10 << 20);
        assert_eq!(l.max_bytes(MediaKind::File), 25 << 20);
        assert_eq!(l.largest(), 25 << 20);
        assert_eq!(l.image_pixels, 40_000_000);
        assert_eq!(l.voice_duration, Duration::from_secs(300));
    }

    #[test]
    fn jpeg_loses_exif_and_gps_and_is_upright() {
        let input = fx::jpeg_with_gps_exif(200, 100, 6);
        assert!(contains(&input, b"Exif\0\0") && contains(&input, &fx::GPS_LATITUDE));
        let out = image(&input).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out.mime, "image/jpeg");
        assert_eq!((out.width, out.height), (100, 200), "rotated 90°");
        for bytes in [&out.bytes, &out.thumbnail] {
            assert!(!contains(bytes, b"Exif"), "no EXIF left");
            assert!(!contains(bytes, &fx::GPS_LATITUDE), "no GPS left");
            assert!(!contains(bytes, &[0xFF, 0xE1]) || !contains(bytes, b"http://ns.adobe.com"));
        }
        let img = decode(&out.bytes).to_rgb8();
        assert_eq!(img.dimensions(), (100, 200));
        let near =
            |p: &image::Rgb<u8>, c: [u8; 3]| p.0.iter().zip(c).all(|(&a, b)| a.abs_diff(b) < 40);
        // Orientation 6: the stored left half is the displayed top.
        assert!(
            near(img.get_pixel(50, 20), fx::LEFT_COLOUR),
            "top is the left colour"
        );
        assert!(
            near(img.get_pixel(50, 180), fx::RIGHT_COLOUR),
            "bottom is the right colour"
        );
        let thumb = decode(&out.thumbnail);
        assert_eq!((thumb.width(), thumb.height()), (100, 200), "not upscaled");
    }

    #[test]
    fn unrotated_jpeg_keeps_its_shape() {
        let out = image(&fx::jpeg_with_gps_exif(200, 100, 1)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((out.width, out.height), (200, 100));
    }

    #[test]
    fn decompression_bomb_is_refused_at_the_header() {
        let bomb = fx::png_declaring(50_000, 50_000);
        assert!(bomb.len() < 100);
        let start = Instant::now();
        let err = image(&bomb).err();
        assert!(matches!(err, Some(Error::TooLarge(_))), "{err:?}");
        assert!(
            start.elapsed().as_secs_f64() < 1.0,
            "refused before decoding"
        );

        // Under the side limit but over 40 megapixels: 8000 × 5125 = 41 MP.
        let start = Instant::now();
        let err = image(&fx::png_declaring(8000, 5125)).err();
        match err {
            Some(Error::TooLarge(m)) => assert!(m.contains("41 megapixels"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(start.elapsed().as_secs_f64() < 1.0);

        // Over the side limit.
        let err = image(&fx::png_declaring(70_000, 10)).err();
        assert!(matches!(err, Some(Error::TooLarge(_))), "{err:?}");
    }

    #[test]
    fn thumbnails_fit_320_and_never_upscale() {
        let out = image(&fx::png(1000, 600)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((out.mime, out.width, out.height), ("image/png", 1000, 600));
        assert_eq!(out.thumbnail_mime, "image/jpeg");
        let t = decode(&out.thumbnail);
        assert_eq!((t.width(), t.height()), (320, 192));
        assert_eq!(
            image::guess_format(&out.thumbnail).ok(),
            Some(ImageFormat::Jpeg)
        );

        let out = image(&fx::png(600, 1000)).unwrap_or_else(|e| panic!("{e}"));
        let t = decode(&out.thumbnail);
        assert_eq!(t.height(), 320);

        let out = image(&fx::png(40, 30)).unwrap_or_else(|e| panic!("{e}"));
        let t = decode(&out.thumbnail);
        assert_eq!((t.width(), t.height()), (40, 30));
    }

    #[test]
    fn webp_becomes_png_with_alpha_else_jpeg() {
        let out = image(&fx::webp_lossless(50, 40, true)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((out.mime, out.width, out.height), ("image/png", 50, 40));
        assert!(decode(&out.bytes).color().has_alpha());
        // The thumbnail is flattened onto white: the transparent corner is white.
        let t = decode(&out.thumbnail).to_rgb8();
        assert!(
            t.get_pixel(0, 0).0.iter().all(|&c| c > 230),
            "{:?}",
            t.get_pixel(0, 0)
        );

        let out = image(&fx::webp_lossless(50, 40, false)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((out.mime, out.width, out.height), ("image/jpeg", 50, 40));
    }

    #[test]
    fn gifs_animated_stay_animated_stills_become_png() {
        let out = image(&fx::gif_animated(4)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((out.mime, out.width, out.height), ("image/gif", 32, 24));
        let frames = GifDecoder::new(std::io::Cursor::new(&out.bytes))
            .and_then(|d| d.into_frames().collect_frames())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(frames.len(), 4);
        assert_eq!(
            image::guess_format(&out.thumbnail).ok(),
            Some(ImageFormat::Jpeg)
        );

        let out = image(&fx::gif_animated(1)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((out.mime, out.width, out.height), ("image/png", 32, 24));

        // 4 frames of 32 × 24 = 3072 pixels, over a 3000-pixel budget.
        let limits = MediaLimits {
            image_pixels: 3000,
            ..MediaLimits::default()
        };
        let gif = fx::gif_animated(4);
        let err = process_image(&mut file_with(&gif), "image/gif", &limits).err();
        assert!(matches!(err, Some(Error::TooLarge(_))), "{err:?}");
    }

    #[test]
    fn image_mime_must_be_an_image() {
        let err = process_image(
            &mut file_with(&fx::pdf_bytes()),
            "application/pdf",
            &MediaLimits::default(),
        )
        .err();
        assert!(matches!(err, Some(Error::UnsupportedMediaType(_))));
    }

    #[test]
    fn ogg_opus_duration_subtracts_pre_skip() {
        assert_ms(
            duration(&fx::ogg_opus(3000, 312)).unwrap_or_else(|e| panic!("{e}")),
            3000.0,
        );
        let d = duration(&fx::ogg_opus(2000, 312)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d, Duration::from_secs(2));
        // Longer than one page window (65 307 bytes) from the end.
        assert_ms(
            duration(&fx::ogg_opus(120_000, 3840)).unwrap_or_else(|e| panic!("{e}")),
            120_000.0,
        );
        // Garbage appended after the last page: found by its CRC.
        let mut junk = fx::ogg_opus(3000, 312);
        junk.extend_from_slice(b"OggS\0\0 not a page at all");
        assert_ms(duration(&junk).unwrap_or_else(|e| panic!("{e}")), 3000.0);
    }

    #[test]
    fn ogg_multiplexed_is_refused() {
        let mut two = fx::ogg_opus(1000, 312);
        let mut other = fx::ogg_opus(500, 312);
        // Append the last page of a second stream with another serial (and
        // a CRC recomputed for it).
        let last = other
            .windows(4)
            .rposition(|w| w == b"OggS")
            .unwrap_or_else(|| panic!("a page"));
        other[last + 14] ^= 0xFF;
        other[last + 22..last + 26].copy_from_slice(&[0; 4]);
        let crc = fx::ogg_crc(&other[last..]);
        other[last + 22..last + 26].copy_from_slice(&crc.to_le_bytes());
        two.extend_from_slice(&other[last..]);
        let err = duration(&two).err();
        assert!(
            matches!(&err, Some(Error::UnsupportedMediaType(m)) if m.contains("chained")),
            "{err:?}"
        );
    }

    #[test]
    fn mp3_wav_webm_durations() {
        assert_ms(
            duration(&fx::mp3_cbr(4000)).unwrap_or_else(|e| panic!("{e}")),
            fx::mp3_cbr_exact_ms(4000),
        );
        assert_ms(
            duration(&fx::mp3_cbr(4000)).unwrap_or_else(|e| panic!("{e}")),
            4000.0,
        );
        assert_ms(
            duration(&fx::wav_pcm(2500, 16_000)).unwrap_or_else(|e| panic!("{e}")),
            2500.0,
        );
        assert_ms(
            duration(&fx::webm_opus(3000, false)).unwrap_or_else(|e| panic!("{e}")),
            3000.0,
        );
    }

    #[test]
    fn webm_with_video_is_refused() {
        let s = sniffed(&fx::webm_opus(1000, true));
        assert_eq!((s.kind, s.mime), (MediaKind::Voice, "audio/webm"));
        let err = duration(&fx::webm_opus(1000, true)).err();
        assert!(
            matches!(&err, Some(Error::UnsupportedMediaType(m)) if m.contains("audio only")),
            "{err:?}"
        );
    }

    #[test]
    fn declared_sizes_past_the_file_are_refused_before_symphonia() {
        // A WebM whose CodecPrivate claims 2^40 bytes.
        let mut webm = fx::webm_opus(200, false);
        let at = webm
            .windows(2)
            .position(|w| w == [0x63, 0xA2])
            .unwrap_or_else(|| panic!("CodecPrivate"));
        webm.splice(
            at + 2..at + 3,
            [0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00],
        );
        let err = voice_duration(&mut file_with(&webm), "audio/webm").err();
        assert!(matches!(err, Some(Error::InvalidInput(_))), "{err:?}");

        // An MP4 whose stts declares 2^32 - 1 entries (32 GiB for symphonia).
        let boxed = |kind: &[u8; 4], body: &[u8]| {
            let mut b = ((body.len() + 8) as u32).to_be_bytes().to_vec();
            b.extend_from_slice(kind);
            b.extend_from_slice(body);
            b
        };
        let mut mp4 = boxed(b"ftyp", b"isom\0\0\0\0isomiso2mp41");
        let stts = boxed(b"stts", &[0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 1]);
        let stbl = boxed(b"stbl", &stts);
        let minf = boxed(b"minf", &stbl);
        let mdia = boxed(b"mdia", &minf);
        let trak = boxed(b"trak", &mdia);
        mp4.extend(boxed(b"moov", &trak));
        assert_eq!(sniffed(&mp4).mime, "audio/mp4");
        let err = duration(&mp4).err();
        assert!(
            matches!(&err, Some(Error::InvalidInput(m)) if m.contains("sample table")),
            "{err:?}"
        );
        // A box larger than its parent.
        let mut bad = mp4.clone();
        let trak_at = bad
            .windows(4)
            .position(|w| w == b"trak")
            .unwrap_or_else(|| panic!("trak"));
        bad[trak_at - 4..trak_at].copy_from_slice(&0x7FFF_FFFFu32.to_be_bytes());
        let err = duration(&bad).err();
        assert!(
            matches!(&err, Some(Error::InvalidInput(m)) if m.contains("a box")),
            "{err:?}"
        );
    }

    /// A reader that counts the bytes it hands out.
    struct Counting<R> {
        inner: R,
        read: u64,
    }

    impl<R: Read> Read for Counting<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.read += n as u64;
            Ok(n)
        }
    }

    impl<R: Seek> Seek for Counting<R> {
        fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
            self.inner.seek(to)
        }
    }

    /// What `check` answers on a file holding `bytes`, and how many bytes
    /// it read.
    fn read_by(
        bytes: &[u8],
        check: impl FnOnce(&mut Counting<File>, u64) -> Result<()>,
    ) -> (Result<()>, u64) {
        let mut counting = Counting {
            inner: file_with(bytes),
            read: 0,
        };
        let answer = check(&mut counting, bytes.len() as u64);
        (answer, counting.read)
    }

    #[test]
    fn voice_notes_stream_from_the_file() {
        // 20 MiB of WAV, much larger than any buffer on the way.
        let wav = fx::wav_pcm(660_000, 16_000);
        assert!(wav.len() > 20 << 20);
        let mut file = file_with(&wav);
        drop(wav);
        let d = voice_duration(&mut file, "audio/wav").unwrap_or_else(|e| panic!("{e}"));
        assert_ms(d, 660_000.0);

        // A WebM whose blocks span several of the checks' buffers.
        assert_ms(
            duration(&fx::webm_opus(30_000, false)).unwrap_or_else(|e| panic!("{e}")),
            30_000.0,
        );

        // The size checks read headers, not payloads: an MP4 with 20 MiB of
        // media data before its moov box, and a WebM with a 20 MiB block.
        let boxed = |kind: &[u8; 4], body: &[u8]| {
            let mut b = ((body.len() + 8) as u32).to_be_bytes().to_vec();
            b.extend_from_slice(kind);
            b.extend_from_slice(body);
            b
        };
        let mut mp4 = boxed(b"ftyp", b"isom\0\0\0\0isomiso2mp41");
        mp4.extend(boxed(b"mdat", &vec![0x5A; 20 << 20]));
        let stts = boxed(b"stts", &[0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1]);
        let moov = |stts: &[u8]| {
            boxed(
                b"moov",
                &boxed(
                    b"trak",
                    &boxed(b"mdia", &boxed(b"minf", &boxed(b"stbl", stts))),
                ),
            )
        };
        let mut good = mp4.clone();
        good.extend(moov(&stts));
        let (answer, read) = read_by(&good, |r, len| check_mp4_sizes(r, len));
        answer.unwrap_or_else(|e| panic!("{e}"));
        assert!(read < 64 << 10, "read {read} bytes");
        // The same with 2^32 - 1 entries: refused, still from the headers.
        let mut bad = mp4;
        bad.extend(moov(&boxed(
            b"stts",
            &[0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 1],
        )));
        let (answer, read) = read_by(&bad, |r, len| check_mp4_sizes(r, len));
        let err = answer.err();
        assert!(
            matches!(&err, Some(Error::InvalidInput(m)) if m.contains("sample table")),
            "{err:?}"
        );
        assert!(read < 64 << 10, "read {read} bytes");

        let mut webm = fx::webm_opus(1000, false);
        // A SimpleBlock with an eight-byte size, Xiph-laced into two frames.
        let mut block = vec![0x81, 0, 0, 0x82, 1, 0xFF, 0xFF, 0x10];
        block.resize(20 << 20, 0x5A);
        webm.extend_from_slice(&[0xA3, 0x01]);
        webm.extend_from_slice(&(block.len() as u64).to_be_bytes()[1..]);
        webm.extend_from_slice(&block);
        let (answer, read) = read_by(&webm, |r, len| check_ebml_sizes(r, len));
        answer.unwrap_or_else(|e| panic!("{e}"));
        assert!(read < 64 << 10, "read {read} bytes");
    }

    #[test]
    fn an_mp4_of_countless_empty_boxes_is_refused() {
        // ftyp, then 20,000 empty `moov` boxes (containers, so each is
        // walked): refused at the cap, not walked to the end.
        let mut mp4 = b"\0\0\0\x14ftypM4A \0\0\0\0M4A ".to_vec();
        for _ in 0..20_000 {
            mp4.extend_from_slice(b"\0\0\0\x08moov");
        }
        let err = voice_duration(&mut file_with(&mp4), "audio/mp4").err();
        assert!(
            matches!(&err, Some(Error::InvalidInput(m)) if m.contains("boxes")),
            "{err:?}"
        );
    }

    #[test]
    fn voice_mime_must_be_voice() {
        let err = voice_duration(&mut file_with(&fx::pdf_bytes()), "application/pdf").err();
        assert!(matches!(err, Some(Error::UnsupportedMediaType(_))));
    }

    #[test]
    fn garbage_after_a_valid_header_is_an_error() {
        let mut cases = Vec::new();
        let mut jpeg = fx::jpeg_with_gps_exif(64, 64, 1);
        jpeg.truncate(400);
        jpeg.extend_from_slice(&[0x5A; 300]);
        cases.push(jpeg);
        let mut png = fx::png(64, 64);
        png.truncate(40);
        png.extend_from_slice(&[0x5A; 300]);
        cases.push(png);
        for bytes in cases {
            let err = image(&bytes).err();
            assert!(matches!(err, Some(Error::InvalidInput(_))), "{err:?}");
        }
        let mut wav = fx::wav_pcm(100, 8000);
        wav.truncate(12);
        wav.extend_from_slice(&[0x5A; 300]);
        assert!(duration(&wav).is_err());
        let mut ogg = fx::ogg_opus(1000, 312);
        ogg.truncate(40);
        ogg.extend_from_slice(&[0x5A; 300]);
        assert!(duration(&ogg).is_err());
    }

    /// Every fixture, cut at many lengths and with bytes flipped: errors are
    /// fine, panics (and hangs) are not.
    fn all_fixtures() -> Vec<Vec<u8>> {
        vec![
            fx::jpeg_with_gps_exif(48, 32, 6),
            fx::png(24, 16),
            fx::webp_lossless(24, 16, true),
            fx::webp_lossless(24, 16, false),
            fx::gif_animated(3),
            fx::ogg_opus(500, 312),
            fx::mp3_cbr(300),
            fx::wav_pcm(100, 8000),
            fx::webm_opus(300, false),
            fx::pdf_bytes(),
        ]
    }

    fn run_all(bytes: &[u8]) {
        let Ok(s) = sniff(bytes) else { return };
        match s.kind {
            MediaKind::Image => {
                let _ = process_image(&mut file_with(bytes), s.mime, &MediaLimits::default());
            }
            MediaKind::Voice => {
                let _ = voice_duration(&mut file_with(bytes), s.mime);
            }
            MediaKind::File => {}
        }
    }

    #[test]
    fn truncations_never_panic() {
        for bytes in all_fixtures() {
            let step = (bytes.len() / 64).max(1);
            for cut in (0..bytes.len()).step_by(step) {
                run_all(bytes.get(..cut).unwrap_or(&bytes));
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn corrupted_fixtures_never_panic(
            which in 0usize..10,
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        ) {
            let fixtures = all_fixtures();
            let mut bytes = fixtures.get(which).cloned().unwrap_or_default();
            if !bytes.is_empty() {
                for (at, v) in flips {
                    let i = at.index(bytes.len());
                    // Keep the magic so that the decoders, not sniff, see it.
                    if i >= 16 {
                        bytes[i] = v;
                    }
                }
            }
            run_all(&bytes);
        }
    }

    #[test]
    fn file_names_are_sanitized() {
        let s = |n: &str| sanitize_file_name(n);
        assert_eq!(s("report.pdf").as_deref(), Some("report.pdf"));
        assert_eq!(s("../../etc/passwd").as_deref(), Some("passwd"));
        assert_eq!(s("C:\\Users\\me\\cv.pdf").as_deref(), Some("cv.pdf"));
        assert_eq!(s("  ..hidden. ").as_deref(), Some("hidden"));
        assert_eq!(
            s("a<b>c:d\"e|f?g*h\u{0}\n.pdf").as_deref(),
            Some("abcdefgh.pdf")
        );
        assert_eq!(s("café.pdf").as_deref(), Some("café.pdf"));
        assert_eq!(s(""), None);
        assert_eq!(s("..."), None);
        assert_eq!(s("dir/"), None);
        assert_eq!(s("???"), None);
        let long = "é".repeat(200);
        let cut = s(&long).unwrap_or_default();
        assert_eq!(cut.len(), 254);
        assert!(cut.chars().all(|c| c == 'é'));
    }
}
