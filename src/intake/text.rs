//! A case file as text: decoding, positions (line and column, whatever the
//! line endings), and how messages from elsewhere show the values in them.

use crate::case::codes::{push_visible, quoted};

/// The file's bytes as UTF-8 text without a byte-order mark, or why not:
/// said once, with where the first bad byte is.
pub(crate) fn decode(bytes: &[u8]) -> Result<&str, String> {
    if bytes.starts_with(&[0xff, 0xfe]) || bytes.starts_with(&[0xfe, 0xff]) {
        return Err("is UTF-16 text; save it as UTF-8 (in Excel: \"CSV UTF-8\")".into());
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => Ok(text.strip_prefix('\u{feff}').unwrap_or(text)),
        Err(e) => {
            let offset = e.valid_up_to();
            // Everything before the bad byte is text, so its position can
            // be counted the usual way.
            let before = std::str::from_utf8(&bytes[..offset]).unwrap_or_default();
            let before = before.strip_prefix('\u{feff}').unwrap_or(before);
            let (line, column) = LineIndex::new(before).position(before, before.len());
            let column = column.map(|c| format!(", column {c}")).unwrap_or_default();
            Err(format!(
                "is not UTF-8: the byte 0x{:02X} at offset {offset} (line {line}{column}) is not part of a UTF-8 \
                 character (there may be more); save the file as UTF-8 (in Excel: \"CSV UTF-8\")",
                bytes[offset]
            ))
        }
    }
}

/// Where each line starts, found in one pass so that a record's line is a
/// binary search, not a count from the start of the file (which made a
/// large JSON file quadratic). A line ends at `\n`, `\r\n` or a lone `\r`
/// (older Mac exports), as the CSV reader and editors count them.
pub(crate) struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    pub fn new(text: &str) -> LineIndex {
        // `match_indices` with a `char` searches with memchr, which matters
        // for files of hundreds of megabytes.
        let mut starts: Vec<usize> = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        let lone_cr = text
            .match_indices('\r')
            .map(|(i, _)| i + 1)
            .filter(|&next| text.as_bytes().get(next) != Some(&b'\n'));
        let before = starts.len();
        starts.extend(lone_cr);
        if starts.len() > before {
            starts.sort_unstable();
        }
        LineIndex { starts }
    }

    /// The 1-based line holding the byte at `offset`.
    pub fn line(&self, offset: usize) -> u64 {
        self.starts.partition_point(|&s| s <= offset) as u64
    }

    /// The 1-based line and column (in characters) of `offset` in `text`,
    /// the text this index was made from. No column more than 64 KiB into a
    /// line: counting characters from the start of a minified JSON file for
    /// each of its errors would make the import quadratic again, and such a
    /// column helps no one.
    pub fn position(&self, text: &str, offset: usize) -> (u64, Option<usize>) {
        let line = self.line(offset);
        let start = self.starts[line as usize - 1];
        let column = text
            .get(start..offset)
            .filter(|s| s.len() <= 64 * 1024)
            .map(|s| s.chars().count() + 1);
        (line, column)
    }

    /// `line L, column C` (or `line L, offset O` far into a long line) for
    /// a message.
    pub fn describe(&self, text: &str, offset: usize) -> String {
        match self.position(text, offset) {
            (line, Some(column)) => format!("line {line}, column {column}"),
            (line, None) => format!("line {line}, offset {offset}"),
        }
    }
}

/// A serde_json error's message without serde's position, and the error's
/// offset in `text` when serde knew it. serde counts lines by `\n` from the
/// start of the text it was given, `base` bytes into `text`.
pub(crate) fn json_error(e: &serde_json::Error, text: &str, base: usize) -> (String, Option<usize>) {
    let message = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let message = message.strip_suffix(&suffix).unwrap_or(&message).to_owned();
    if e.line() == 0 {
        return (message, None);
    }
    let part = &text[base..];
    let line_start = match e.line() {
        1 => 0,
        n => part.match_indices('\n').nth(n - 2).map_or(part.len(), |(i, _)| i + 1),
    };
    let mut offset = (line_start + e.column()).min(part.len());
    while !part.is_char_boundary(offset) {
        offset -= 1;
    }
    (message, Some(base + offset))
}

/// Characters of a field name a message shows.
const FIELD_CHARS: usize = 80;
/// Bytes a quoted span in a message may have before it is cut.
const SPAN_BYTES: usize = 400;
/// Characters of a whole message, the last resort.
const MESSAGE_CHARS: usize = 2000;

/// A field name for a message: a JSON path can hold a key of any length.
pub(crate) fn tidy_field(field: &str) -> String {
    let mut out = String::new();
    let mut chars = field.chars();
    for c in chars.by_ref().take(FIELD_CHARS) {
        push_visible(&mut out, c);
    }
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

/// A reason for a message. Ours quote values with `quoted` already; the ones
/// from serde and the case enums quote them whole, in backticks or double
/// quotes. Any quoted span longer than `SPAN_BYTES` is cut the way `quoted`
/// cuts, control characters are escaped everywhere, and the whole is capped.
pub(crate) fn tidy_reason(reason: &str) -> String {
    let mut out = String::with_capacity(reason.len().min(MESSAGE_CHARS));
    let mut rest = reason;
    while let Some(open) = rest.find(['`', '"']) {
        let quote = &rest[open..=open];
        push_all(&mut out, &rest[..=open]);
        let inner_and_after = &rest[open + 1..];
        let Some(close) = closing(inner_and_after, quote) else {
            rest = inner_and_after;
            break;
        };
        let inner = &inner_and_after[..close];
        if inner.len() > SPAN_BYTES {
            let shown = quoted(inner);
            // `quoted` adds its own backticks: keep the span's quote.
            let shown = shown
                .trim_start_matches('`')
                .replacen("…` (", &format!("…{quote} ("), 1);
            out.push_str(&shown);
        } else {
            push_all(&mut out, inner);
            out.push_str(quote);
        }
        rest = &inner_and_after[close + 1..];
    }
    push_all(&mut out, rest);
    if out.chars().count() > MESSAGE_CHARS {
        out = out.chars().take(MESSAGE_CHARS).collect::<String>() + "…";
    }
    out
}

/// The closing quote's offset: the next backtick, or the next double quote
/// not escaped with a backslash (serde writes strings with `{:?}`).
fn closing(s: &str, quote: &str) -> Option<usize> {
    if quote == "`" {
        return s.find('`');
    }
    let mut escaped = false;
    for (i, b) in s.bytes().enumerate() {
        match b {
            b'\\' if !escaped => escaped = true,
            b'"' if !escaped => return Some(i),
            _ => escaped = false,
        }
    }
    None
}

fn push_all(out: &mut String, s: &str) {
    s.chars().for_each(|c| push_visible(out, c));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_end_at_lf_crlf_and_lone_cr() {
        for (text, line) in [
            ("a\nb\nX", 3),
            ("a\r\nb\r\nX", 3),
            ("a\rb\rX", 3),
            ("a\r\n\r\nb\rX\n", 4),
        ] {
            let index = LineIndex::new(text);
            assert_eq!(index.line(text.find('X').unwrap()), line, "{text:?}");
            assert_eq!(index.line(0), 1);
        }
        let text = "x\r\nyé\r\nzz";
        let index = LineIndex::new(text);
        assert_eq!(index.position(text, text.find('z').unwrap()), (3, Some(1)));
        assert_eq!(index.describe(text, text.find('é').unwrap() + 2), "line 2, column 3");
        let minified = format!("[{}]", "{\"a\":1},".repeat(20_000));
        let index = LineIndex::new(&minified);
        assert_eq!(index.describe(&minified, 100_000), "line 1, offset 100000");
    }

    #[test]
    fn encoding_errors_say_where_once() {
        let err = decode(b"a,b\r\nMarsh,Ok\xe9for\r\n").unwrap_err();
        assert!(err.contains("the byte 0xE9 at offset 13 (line 2, column 9)"), "{err}");
        let err = decode(b"\xef\xbb\xbfab\xe9").unwrap_err();
        assert!(err.contains("the byte 0xE9 at offset 5 (line 1, column 3)"), "{err}");
        assert!(decode(b"\xff\xfea\x00").unwrap_err().contains("UTF-16"));
        assert_eq!(decode("\u{feff}a,b".as_bytes()).unwrap(), "a,b");
    }

    #[test]
    fn long_quoted_values_in_messages_are_cut() {
        let big = "é".repeat(1 << 20);
        let serde_like = format!("invalid type: string {big:?}, expected u32");
        assert_eq!(
            tidy_reason(&serde_like),
            format!(
                "invalid type: string \"{}…\" (2097152 bytes), expected u32",
                "é".repeat(40)
            )
        );
        let enum_like = format!("`{big}` is not one of: standard, urgent");
        assert!(tidy_reason(&enum_like).ends_with("…` (2097152 bytes) is not one of: standard, urgent"));
        assert_eq!(tidy_reason("`a\0b` is \"c\\\"d\""), "`a\\0b` is \"c\\\"d\"");
        assert_eq!(tidy_reason(&quoted(&big)), quoted(&big));
        assert!(tidy_field(&"k".repeat(1000)).chars().count() <= 81);
    }
}
