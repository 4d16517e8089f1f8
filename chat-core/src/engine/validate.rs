//! Validation of what clients send. Each function returns the value to
//! store or an error that says what is wrong.

use crate::error::{Error, Result};

pub(super) const MAX_NAME: usize = 100;
pub(super) const MAX_DESCRIPTION: usize = 2000;
pub(super) const MAX_URL: usize = 2048;
pub(super) const MAX_REASON: usize = 1000;
pub(super) const MAX_CLIENT_MSG_ID: usize = 64;
pub(super) const MAX_EMOJI_BYTES: usize = 64;

fn allowed_char(c: char) -> bool {
    !c.is_control() || c == '\n' || c == '\t'
}

/// Text content: 1..=`max` scalar values after trimming, no control
/// characters other than `\n` and `\t`. Stored trimmed.
pub(super) fn text(content: &str, max: usize) -> Result<String> {
    let trimmed = content.trim();
    if trimmed.is_empty() {
        return Err(Error::invalid("content is empty"));
    }
    if let Some(c) = trimmed.chars().find(|c| !allowed_char(*c)) {
        return Err(Error::invalid(format!(
            "content contains the control character U+{:04X}",
            u32::from(c)
        )));
    }
    let len = trimmed.chars().count();
    if len > max {
        return Err(Error::invalid(format!(
            "content has {len} characters; at most {max} are allowed"
        )));
    }
    Ok(trimmed.to_owned())
}

/// E2EE content: opaque to the server, stored as sent; only its size is
/// checked.
pub(super) fn ciphertext(content: &str, max_bytes: usize) -> Result<String> {
    if content.is_empty() {
        return Err(Error::invalid("content is empty"));
    }
    if content.len() > max_bytes {
        return Err(Error::invalid(format!(
            "ciphertext has {} bytes; at most {max_bytes} are allowed",
            content.len()
        )));
    }
    Ok(content.to_owned())
}

pub(super) fn client_msg_id(id: &str) -> Result<()> {
    let n = id.chars().count();
    if n == 0 || n > MAX_CLIENT_MSG_ID || id.chars().any(char::is_control) {
        return Err(Error::invalid(format!(
            "client_msg_id must be 1..={MAX_CLIENT_MSG_ID} characters without control characters"
        )));
    }
    Ok(())
}

/// A group name: 1..=100 characters after trimming, one line.
pub(super) fn group_name(name: &str) -> Result<String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(Error::invalid(format!(
            "name must be 1..={MAX_NAME} characters on one line"
        )));
    }
    Ok(name.to_owned())
}

/// Optional free text; empty after trimming means "none".
pub(super) fn optional_text(
    field: &str,
    value: Option<&str>,
    max: usize,
) -> Result<Option<String>> {
    let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if v.chars().any(|c| !allowed_char(c)) || v.chars().count() > max {
        return Err(Error::invalid(format!(
            "{field} must be at most {max} characters without control characters"
        )));
    }
    Ok(Some(v.to_owned()))
}

/// Optional http(s) URL; empty means "none".
pub(super) fn optional_url(value: Option<&str>) -> Result<Option<String>> {
    let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let scheme_ok = v.starts_with("https://") || v.starts_with("http://");
    if !scheme_ok || v.len() > MAX_URL || v.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(Error::invalid(format!(
            "avatar_url must be an http or https URL of at most {MAX_URL} bytes"
        )));
    }
    Ok(Some(v.to_owned()))
}

/// An https URL of at most `MAX_URL` bytes, parsed (not checked by its
/// prefix): links that users are shown must not lead to plain http, or to
/// `javascript:` and the like.
pub(crate) fn https_url(value: &str) -> Result<url::Url> {
    let refused = || {
        Error::invalid(format!(
            "url must be an https URL of at most {MAX_URL} bytes"
        ))
    };
    if value.len() > MAX_URL {
        return Err(refused());
    }
    let url = url::Url::parse(value).map_err(|_| refused())?;
    if url.scheme() != "https" || url.host().is_none() {
        return Err(refused());
    }
    Ok(url)
}

/// A reaction: a short string without whitespace or control characters
/// (emoji sequences can be several scalar values long).
pub(super) fn emoji_ok(emoji: &str) -> Result<()> {
    if emoji.is_empty()
        || emoji.len() > MAX_EMOJI_BYTES
        || emoji.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(Error::invalid(format!(
            "emoji must be 1..={MAX_EMOJI_BYTES} bytes without spaces"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_rules() {
        assert_eq!(text("  hi \n", 10).ok().as_deref(), Some("hi"));
        assert!(text("   ", 10).is_err());
        assert!(text("a\u{7}b", 10).is_err());
        assert!(text("a\rb", 10).is_err());
        assert!(text("a\nb\tc", 10).is_ok());
        assert!(text(&"é".repeat(10), 10).is_ok());
        assert!(text(&"é".repeat(11), 10).is_err());
    }

    #[test]
    fn small_fields() {
        assert!(client_msg_id("").is_err());
        assert!(client_msg_id(&"x".repeat(65)).is_err());
        assert!(client_msg_id("c-1").is_ok());
        assert!(emoji_ok("👍").is_ok());
        assert!(emoji_ok("👨‍👩‍👧‍👦").is_ok());
        assert!(emoji_ok("a b").is_err());
        assert!(optional_url(Some("javascript:alert(1)")).is_err());
        assert_eq!(optional_url(Some("")).ok(), Some(None));
        assert!(group_name("line\nbreak").is_err());
    }
}
