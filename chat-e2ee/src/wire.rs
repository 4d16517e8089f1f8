//! Parsing of the wire encodings both sides read (see the crate docs).

use openmls::messages::group_info::VerifiableGroupInfo;
use openmls::prelude::{BasicCredential, tls_codec::Deserialize as _};
use openmls::prelude::{
    Credential, KeyPackage, KeyPackageIn, LeafNode, MlsMessageBodyIn, MlsMessageIn, OpenMlsCrypto,
    ProtocolMessage, ProtocolVersion,
};

use crate::CIPHERSUITE;

/// A key package in either accepted encoding: `MLSMessage(key_package)` or a
/// bare `KeyPackage`.
pub(crate) fn parse_key_package(bytes: &[u8]) -> Result<KeyPackageIn, String> {
    if let Ok(message) = MlsMessageIn::tls_deserialize_exact(bytes) {
        return match message.extract() {
            MlsMessageBodyIn::KeyPackage(key_package) => Ok(key_package),
            _ => Err("MLS message does not carry a key package".to_owned()),
        };
    }
    KeyPackageIn::tls_deserialize_exact(bytes)
        .map_err(|_| "neither an MLS message nor a key package".to_owned())
}

/// Parses, verifies (signatures, lifetime, ...) and checks the ciphersuite of
/// a key package.
pub(crate) fn verify_key_package(
    bytes: &[u8],
    crypto: &impl OpenMlsCrypto,
) -> Result<KeyPackage, String> {
    let key_package = parse_key_package(bytes)?
        .validate(crypto, ProtocolVersion::Mls10)
        .map_err(|e| e.to_string())?;
    if key_package.ciphersuite() != CIPHERSUITE {
        return Err(format!(
            "unsupported ciphersuite {:?}",
            key_package.ciphersuite()
        ));
    }
    Ok(key_package)
}

/// A group message (public or private) for `process`/`check_commit`.
pub(crate) fn parse_protocol_message(bytes: &[u8]) -> Result<ProtocolMessage, String> {
    let message =
        MlsMessageIn::tls_deserialize_exact(bytes).map_err(|_| "not an MLS message".to_owned())?;
    match message.extract() {
        MlsMessageBodyIn::PublicMessage(m) => Ok(m.into()),
        MlsMessageBodyIn::PrivateMessage(m) => Ok(m.into()),
        _ => Err("not a group message (a welcome, group info or key package)".to_owned()),
    }
}

/// A GroupInfo in either encoding: `MLSMessage(group_info)` or bare.
pub(crate) fn parse_group_info(bytes: &[u8]) -> Result<VerifiableGroupInfo, String> {
    if let Ok(message) = MlsMessageIn::tls_deserialize_exact(bytes) {
        return match message.extract() {
            MlsMessageBodyIn::GroupInfo(group_info) => Ok(group_info),
            _ => Err("MLS message does not carry a group info".to_owned()),
        };
    }
    VerifiableGroupInfo::tls_deserialize_exact(bytes)
        .map_err(|_| "neither an MLS message nor a group info".to_owned())
}

/// The `(user_id, device_id)` a credential names, if it is a BasicCredential
/// of the right form.
pub(crate) fn credential_ids(credential: &Credential) -> Option<(String, String)> {
    let basic = BasicCredential::try_from(credential.clone()).ok()?;
    crate::parse_identity(basic.identity())
}

/// Whether `new` keeps the identity and the signature key of `old`: a
/// member may rotate its encryption keys, never become someone else (MLS
/// leaves that check to the application).
pub(crate) fn same_identity(old: &LeafNode, new: &LeafNode) -> bool {
    old.credential() == new.credential() && old.signature_key() == new.signature_key()
}
