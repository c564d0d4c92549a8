//! Splitting a PAX extended header into its records by their lengths, as
//! POSIX defines them (`LEN KEY=VALUE\n`, LEN counting the whole record),
//! so values may hold any byte, newlines included: binary xattrs
//! (`security.capability`, ACLs) often do. (The `tar` crate splits at
//! newlines, which rejects them.)

use super::stream::PaxRecords;

/// Longest length field read (a header is at most 1 MiB here anyway).
const MAX_LEN_DIGITS: usize = 20;

/// The (key, value) records of the PAX header `bytes`; trailing NUL
/// padding is ignored.
pub fn parse(bytes: &[u8]) -> Result<PaxRecords, String> {
    let mut records = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let rest = &bytes[at..];
        if rest.iter().all(|&b| b == 0) {
            break;
        }
        let bad = |what: &str| format!("bad PAX header: record at byte {at}: {what}");
        let space = rest
            .iter()
            .take(MAX_LEN_DIGITS + 1)
            .position(|&b| b == b' ')
            .ok_or_else(|| bad("no length"))?;
        let digits = &rest[..space];
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return Err(bad("length not a decimal number"));
        }
        let len: usize = std::str::from_utf8(digits)
            .ok()
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| bad("length out of range"))?;
        if len <= space + 2 || len > rest.len() {
            return Err(bad(&format!(
                "length {len} outside the header's {} bytes",
                rest.len()
            )));
        }
        let Some(body) = rest[space + 1..len].strip_suffix(b"\n") else {
            return Err(bad("no newline where its length ends"));
        };
        let equals = body
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| bad("no '='"))?;
        records.push((body[..equals].to_vec(), body[equals + 1..].to_vec()));
        at += len;
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn values_may_hold_newlines_and_equals() {
        let records = parse(b"22 SCHILY.xattr.a=\n=\n\n13 mtime=1.5\n\0\0").unwrap();
        assert_eq!(
            records,
            [
                (b"SCHILY.xattr.a".to_vec(), b"\n=\n".to_vec()),
                (b"mtime".to_vec(), b"1.5".to_vec()),
            ]
        );
    }

    #[test]
    fn an_empty_value_is_a_record() {
        assert_eq!(parse(b"5 a=\n").unwrap(), [(b"a".to_vec(), Vec::new())]);
    }

    #[test]
    fn malformed_records_are_errors() {
        for bad in [
            &b"12 mtime=1.5\n"[..], // length one short
            b"99 mtime=1.5\n",      // beyond the header
            b"x mtime=1\n",         // not a number
            b"8 abcde\n",           // no '='
            b"99999999999999999999999 a=b\n",
            b"3 \n",
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
