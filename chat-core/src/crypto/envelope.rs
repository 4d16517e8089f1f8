//! The byte format of the records the crypto module writes, and the
//! associated data that binds each one (the tables of the module docs).

use std::fmt;

use aes_gcm::{Aes256Gcm, aead::AeadInPlace};
use ulid::Ulid;
use zeroize::{Zeroize, Zeroizing};

use super::{CryptoError, KeyEpoch, KeyId, keys::KEY_LEN};
use crate::model::{ChatId, MediaId, MessageId, UserId};

/// The format version every record starts with. A new layout takes a new
/// version; old versions keep opening.
const VERSION: u8 = 1;

/// AES-GCM nonce length: 96 bits, the length GCM uses as it is (longer or
/// shorter nonces are hashed first).
pub(super) const NONCE_LEN: usize = 12;

/// AES-GCM tag length: the full 128 bits.
const TAG_LEN: usize = 16;

/// The plaintext of a [`KeyCheck`]: known, so that opening it proves the
/// key (the tag already does; comparing is belt and braces).
pub(super) const CHECK_PLAINTEXT: &[u8] = b"chat-engine key check v1";

/// What a record is: its second byte, and the start of its associated
/// data's label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    UserKey,
    DataKey,
    Sealed,
    Check,
}

impl Kind {
    fn byte(self) -> u8 {
        match self {
            Kind::UserKey => 1,
            Kind::DataKey => 2,
            Kind::Sealed => 3,
            Kind::Check => 4,
        }
    }

    /// The record's name in error messages.
    fn what(self) -> &'static str {
        match self {
            Kind::UserKey => "wrapped user key",
            Kind::DataKey => "wrapped data key",
            Kind::Sealed => "sealed content",
            Kind::Check => "key check",
        }
    }

    /// The label that follows the header in the associated data.
    fn label(self) -> &'static [u8] {
        match self {
            Kind::UserKey => b"chat-engine user-key v1",
            Kind::DataKey => b"chat-engine data-key v1",
            Kind::Sealed => b"chat-engine sealed v1",
            Kind::Check => b"chat-engine key-check v1",
        }
    }

    /// The length of the header's own field: the wrapping key's id, or the
    /// epoch of sealed content.
    fn field_len(self) -> usize {
        match self {
            Kind::Sealed => 4,
            Kind::UserKey | Kind::DataKey | Kind::Check => 8,
        }
    }

    /// The plaintext length of fixed-size records.
    fn plaintext_len(self) -> Option<usize> {
        match self {
            Kind::UserKey | Kind::DataKey => Some(KEY_LEN),
            Kind::Check => Some(CHECK_PLAINTEXT.len()),
            Kind::Sealed => None,
        }
    }

    fn error(self, problem: &'static str) -> CryptoError {
        CryptoError::Format {
            what: self.what(),
            problem,
        }
    }
}

/// The associated data of one record, built field by field: the header
/// (version, kind, the header's field), the kind's label, then what binds
/// the record. The header is also the record's first bytes.
pub(super) struct Associated {
    bytes: Vec<u8>,
    header_len: usize,
}

impl Associated {
    /// Starts with the header of a `kind` record whose header field is
    /// `field` (a key id, or an epoch), and the kind's label.
    fn new(kind: Kind, field: &[u8]) -> Self {
        debug_assert_eq!(field.len(), kind.field_len());
        let label = kind.label();
        let mut bytes = Vec::with_capacity(2 + field.len() + label.len() + 48 + UserId::MAX_LEN);
        bytes.push(VERSION);
        bytes.push(kind.byte());
        bytes.extend_from_slice(field);
        let header_len = bytes.len();
        bytes.extend_from_slice(label);
        Self { bytes, header_len }
    }

    /// A ULID (chat, message or media id): its 16 bytes.
    fn ulid(mut self, id: Ulid) -> Self {
        self.bytes.extend_from_slice(&id.to_bytes());
        self
    }

    /// A user id: its length (8 bytes), then its bytes, so that no two
    /// sequences of fields encode alike.
    fn user(mut self, user: &UserId) -> Self {
        let id = user.as_str().as_bytes();
        // usize is at most 64 bits on every target Rust supports.
        self.bytes
            .extend_from_slice(&(id.len() as u64).to_be_bytes());
        self.bytes.extend_from_slice(id);
        self
    }

    /// An epoch: 4 bytes.
    fn epoch(mut self, epoch: KeyEpoch) -> Self {
        self.bytes.extend_from_slice(&epoch.get().to_be_bytes());
        self
    }

    /// A part index: 4 bytes.
    fn u32(mut self, n: u32) -> Self {
        self.bytes.extend_from_slice(&n.to_be_bytes());
        self
    }

    /// One byte (a [`Purpose`]).
    fn byte(mut self, b: u8) -> Self {
        self.bytes.push(b);
        self
    }

    fn header(&self) -> &[u8] {
        &self.bytes[..self.header_len]
    }
}

/// Encrypts `plaintext` into a record under a fresh random nonce: the
/// header (the start of `aad`), the nonce, the ciphertext and the tag.
pub(super) fn seal(
    cipher: &Aes256Gcm,
    aad: &Associated,
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(CryptoError::Random)?;
    seal_with_nonce(cipher, aad, &nonce, plaintext)
}

/// [`seal`] under a given nonce: for known-answer tests only, since a
/// nonce must never repeat under a key.
pub(super) fn seal_with_nonce(
    cipher: &Aes256Gcm,
    aad: &Associated,
    nonce: &[u8; NONCE_LEN],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    // Checked before the plaintext is copied anywhere.
    if plaintext.len() as u64 > aes_gcm::P_MAX {
        return Err(CryptoError::TooLarge);
    }
    let header = aad.header();
    let mut out = Vec::with_capacity(header.len() + NONCE_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(header);
    out.extend_from_slice(nonce);
    let start = out.len();
    // Encrypted in place: the plaintext copy is overwritten at once, and
    // the capacity above means no reallocation leaves a copy behind.
    out.extend_from_slice(plaintext);
    match cipher.encrypt_in_place_detached(nonce.into(), &aad.bytes, &mut out[start..]) {
        Ok(tag) => {
            out.extend_from_slice(&tag);
            Ok(out)
        }
        Err(_) => {
            out.zeroize();
            Err(CryptoError::TooLarge)
        }
    }
}

/// A record split into its parts; nothing is decrypted yet.
pub(super) struct Parsed<'a> {
    /// The whole header, as stored.
    header: &'a [u8],
    /// The header's own field: a key id or an epoch.
    field: &'a [u8],
    nonce: &'a [u8; NONCE_LEN],
    ciphertext: &'a [u8],
    tag: &'a [u8; TAG_LEN],
}

impl Parsed<'_> {
    /// The header's key id (records wrapped under a key).
    fn key_id(&self, kind: Kind) -> Result<KeyId, CryptoError> {
        <[u8; 8]>::try_from(self.field)
            .map(KeyId)
            .map_err(|_| kind.error("no key id"))
    }

    /// The header's epoch (sealed content).
    fn epoch(&self) -> Result<KeyEpoch, CryptoError> {
        <[u8; 4]>::try_from(self.field)
            .map(|b| KeyEpoch::new(u32::from_be_bytes(b)))
            .map_err(|_| Kind::Sealed.error("no epoch"))
    }
}

/// Splits `bytes` into the parts of a `kind` record, checking its version,
/// kind and length.
pub(super) fn parse(bytes: &[u8], kind: Kind) -> Result<Parsed<'_>, CryptoError> {
    let too_short = || kind.error("too short");
    let (&[version, found], rest) = bytes.split_first_chunk::<2>().ok_or_else(too_short)?;
    if version != VERSION {
        return Err(kind.error("unsupported format version"));
    }
    if found != kind.byte() {
        return Err(kind.error("it is another kind of record"));
    }
    let (field, rest) = rest
        .split_at_checked(kind.field_len())
        .ok_or_else(too_short)?;
    let (nonce, rest) = rest
        .split_first_chunk::<NONCE_LEN>()
        .ok_or_else(too_short)?;
    let (ciphertext, tag) = rest.split_last_chunk::<TAG_LEN>().ok_or_else(too_short)?;
    if kind
        .plaintext_len()
        .is_some_and(|len| len != ciphertext.len())
    {
        return Err(kind.error("wrong length"));
    }
    let header = bytes.get(..2 + field.len()).ok_or_else(too_short)?;
    Ok(Parsed {
        header,
        field,
        nonce,
        ciphertext,
        tag,
    })
}

/// Decrypts a parsed record, authenticating it against `aad`, whose header
/// is the one the caller expects. The stored header must be that one: it
/// is not otherwise authenticated (the associated data is rebuilt from
/// what the caller expects, not read from the record).
pub(super) fn open(
    cipher: &Aes256Gcm,
    aad: &Associated,
    record: &Parsed<'_>,
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    if record.header != aad.header() {
        return Err(CryptoError::Decrypt);
    }
    let mut buf = Zeroizing::new(record.ciphertext.to_vec());
    // aes-gcm >= 0.10.3 decrypts only after the tag checks out.
    cipher
        .decrypt_in_place_detached(record.nonce.into(), &aad.bytes, &mut buf, record.tag.into())
        .map_err(|_| CryptoError::Decrypt)?;
    Ok(buf)
}

/// A record wrapped under a key, whose header names that key.
macro_rules! wrapped_record {
    ($(#[$doc:meta])* $name:ident, $kind:expr) => {
        $(#[$doc])*
        ///
        /// Not secret (it is ciphertext), but useless to print: `Debug`
        /// shows the wrapping key's id and the length.
        #[derive(Clone, PartialEq, Eq, Hash)]
        pub struct $name {
            bytes: Vec<u8>,
            key_id: KeyId,
        }

        impl $name {
            /// Takes bytes as stored, checking that they are a record of
            /// this kind (version, kind, length). Whether they decrypt is
            /// for the key that unwraps them to tell.
            pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, CryptoError> {
                let key_id = parse(&bytes, $kind)?.key_id($kind)?;
                Ok(Self { bytes, key_id })
            }

            /// The bytes to store.
            pub fn as_bytes(&self) -> &[u8] {
                &self.bytes
            }

            /// The bytes to store, without copying.
            pub fn into_bytes(self) -> Vec<u8> {
                self.bytes
            }

            /// The id of the key this was wrapped under, from the header.
            pub fn key_id(&self) -> KeyId {
                self.key_id
            }

            /// A record just sealed under the key `key_id`.
            pub(super) fn sealed(bytes: Vec<u8>, key_id: KeyId) -> Self {
                Self { bytes, key_id }
            }

            /// The parts, to open.
            pub(super) fn parsed(&self) -> Result<Parsed<'_>, CryptoError> {
                parse(&self.bytes, $kind)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("key_id", &self.key_id)
                    .field("len", &self.bytes.len())
                    .finish()
            }
        }
    };
}

wrapped_record!(
    /// A [`UserKey`](super::UserKey) wrapped by the
    /// [`MasterKey`](super::MasterKey), bound to its user: what the
    /// [`KeyStore`](crate::keystore::KeyStore) keeps per user.
    WrappedUserKey,
    Kind::UserKey
);

wrapped_record!(
    /// A [`DataKey`](super::DataKey) wrapped by its sender's
    /// [`UserKey`](super::UserKey), bound to its chat, sender and epoch.
    /// May be stored beside the messages: without the user key it opens
    /// nothing.
    WrappedDataKey,
    Kind::DataKey
);

wrapped_record!(
    /// A known value sealed under the master key when the key store is
    /// first used, so that a server given another master key can say so
    /// at start instead of failing on every message
    /// ([`MasterKey::verify_check`](super::MasterKey::verify_check)).
    KeyCheck,
    Kind::Check
);

/// The epoch a piece of sealed content was sealed in, read from its header
/// without decrypting: which data key opens it, together with its chat and
/// sender.
pub fn sealed_epoch(sealed: &[u8]) -> Result<KeyEpoch, CryptoError> {
    parse(sealed, Kind::Sealed)?.epoch()
}

/// What a piece of sealed content is, bound into its associated data so
/// that content of one purpose never opens as another (a report snapshot
/// passed off as the message body, a thumbnail as the media file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Purpose {
    /// A message's body (its current text).
    Body,
    /// An edited text kept apart from the body (an edit history entry).
    /// An engine that overwrites the body on edit seals it as
    /// [`Purpose::Body`].
    Edit,
    /// The copy of a message that a report keeps as evidence.
    ReportSnapshot,
    /// The bytes of a media object.
    Media,
    /// The thumbnail of a media object.
    MediaThumbnail,
}

impl Purpose {
    fn byte(self) -> u8 {
        match self {
            Purpose::Body => 1,
            Purpose::Edit => 2,
            Purpose::ReportSnapshot => 3,
            Purpose::Media => 4,
            Purpose::MediaThumbnail => 5,
        }
    }
}

/// What one [`DataKey`](super::DataKey) is for: one sender's content in one
/// chat during one epoch. Binds the wrapped data key, and is part of every
/// [`Aad`] sealed under it; a natural cache key for unwrapped data keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DataKeyScope {
    /// The chat.
    pub chat: ChatId,
    /// The sender, whose [`UserKey`](super::UserKey) wraps the data key.
    pub sender: UserId,
    /// The epoch.
    pub epoch: KeyEpoch,
}

impl DataKeyScope {
    /// The scope of `sender`'s data key for `chat` in `epoch`.
    pub fn new(chat: ChatId, sender: UserId, epoch: KeyEpoch) -> Self {
        Self {
            chat,
            sender,
            epoch,
        }
    }

    /// The associated data of this scope's wrapped data key, under the user
    /// key `wrapping`.
    pub(super) fn associated(&self, wrapping: KeyId) -> Associated {
        Associated::new(Kind::DataKey, wrapping.as_bytes())
            .ulid(self.chat.ulid())
            .user(&self.sender)
            .epoch(self.epoch)
    }
}

/// The associated data of sealed content: its purpose, the object it
/// belongs to (a message or a media object) and the [`DataKeyScope`] (chat,
/// sender, epoch). Content opens only with the `Aad` it was sealed with,
/// so a body copied to another row, chat or epoch fails to decrypt.
///
/// It does not bind a version of the object: an older edit of the same
/// message, sealed with the same `Aad`, opens in the newer one's place.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Aad {
    purpose: Purpose,
    object: Ulid,
    scope: DataKeyScope,
    /// For content sealed in parts (media): the part's index and whether
    /// it is the last, so parts cannot be reordered, dropped or cut off.
    part: Option<(u32, bool)>,
}

/// How many bytes sealing adds to content: the header (version, kind,
/// epoch), the nonce and the tag. The same for every size, so that a byte
/// range of content sealed in parts maps onto a range of the sealed bytes.
pub const SEALED_OVERHEAD: usize = 2 + 4 + NONCE_LEN + TAG_LEN;

impl Aad {
    /// The associated data of content of `purpose` belonging to `object`
    /// (a message or media id, as a ULID).
    pub fn new(purpose: Purpose, scope: &DataKeyScope, object: Ulid) -> Self {
        Self {
            purpose,
            object,
            scope: scope.clone(),
            part: None,
        }
    }

    /// Part `index` of the bytes of a media object (or of its thumbnail),
    /// sealed in parts so that a byte range opens without the rest;
    /// `last` marks the final part, so a cut-off object does not open.
    pub fn media_part(
        scope: &DataKeyScope,
        media: MediaId,
        thumbnail: bool,
        index: u32,
        last: bool,
    ) -> Self {
        let purpose = if thumbnail {
            Purpose::MediaThumbnail
        } else {
            Purpose::Media
        };
        Self {
            part: Some((index, last)),
            ..Self::new(purpose, scope, media.ulid())
        }
    }

    /// A message's body.
    pub fn body(scope: &DataKeyScope, message: MessageId) -> Self {
        Self::new(Purpose::Body, scope, message.ulid())
    }

    /// An edit of a message kept apart from its body.
    pub fn edit(scope: &DataKeyScope, message: MessageId) -> Self {
        Self::new(Purpose::Edit, scope, message.ulid())
    }

    /// A report's copy of the reported message (sealed under the message
    /// sender's data key).
    pub fn report_snapshot(scope: &DataKeyScope, message: MessageId) -> Self {
        Self::new(Purpose::ReportSnapshot, scope, message.ulid())
    }

    /// The bytes of a media object.
    pub fn media(scope: &DataKeyScope, media: MediaId) -> Self {
        Self::new(Purpose::Media, scope, media.ulid())
    }

    /// The thumbnail of a media object.
    pub fn media_thumbnail(scope: &DataKeyScope, media: MediaId) -> Self {
        Self::new(Purpose::MediaThumbnail, scope, media.ulid())
    }

    /// What the content is.
    pub fn purpose(&self) -> Purpose {
        self.purpose
    }

    /// The message or media object the content belongs to.
    pub fn object(&self) -> Ulid {
        self.object
    }

    /// The chat, sender and epoch, which pick the data key.
    pub fn scope(&self) -> &DataKeyScope {
        &self.scope
    }

    /// The bytes to authenticate.
    pub(super) fn associated(&self) -> Associated {
        let associated = Associated::new(Kind::Sealed, &self.scope.epoch.get().to_be_bytes())
            .byte(self.purpose.byte())
            .ulid(self.scope.chat.ulid())
            .ulid(self.object)
            .user(&self.scope.sender);
        match self.part {
            // Appended after the user id, whose length prefix keeps the
            // encoding unambiguous; whole content has nothing here.
            Some((index, last)) => associated.u32(index).byte(u8::from(last)),
            None => associated,
        }
    }
}

/// The associated data of `user`'s wrapped user key under the master key
/// `wrapping`.
pub(super) fn user_key_associated(wrapping: KeyId, user: &UserId) -> Associated {
    Associated::new(Kind::UserKey, wrapping.as_bytes()).user(user)
}

/// The associated data of the key check of the master key `key`.
pub(super) fn check_associated(key: KeyId) -> Associated {
    Associated::new(Kind::Check, key.as_bytes())
}
