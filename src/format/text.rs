//! Text forms of on-disk byte strings: hex digests and UUIDs.

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes from hex (`None` when malformed).
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A UUID in its usual text form (`8-4-4-4-12` hex digits).
pub fn format_uuid(uuid: &[u8; 16]) -> String {
    let h = hex(uuid);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Parses a UUID in its usual text form.
pub fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let bytes = from_hex(&text.replace('-', ""))?;
    bytes.try_into().ok()
}
