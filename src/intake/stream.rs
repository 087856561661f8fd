//! A case file read as a stream: the UTF-8 check before anything is
//! stored, and the line of a byte offset found by counting forward, so
//! memory does not grow with the file.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

const UTF8_BOM: &[u8] = b"\xef\xbb\xbf";

/// What the UTF-8 check learnt of a file.
pub(crate) struct Checked {
    /// It starts with a UTF-8 byte-order mark (3 bytes to skip).
    pub bom: bool,
    /// Lines, counted as `LineIndex` counts them (`\n`, `\r\n`, lone `\r`).
    pub lines: u64,
}

/// Reads the whole file once, in 64 KiB pieces: UTF-8 or why not (the
/// message of `text::decode`, which reads the file up to the bad byte to
/// say where it is).
pub(crate) fn check_utf8(path: &Path) -> std::io::Result<Result<Checked, String>> {
    let mut file = BufReader::with_capacity(64 * 1024, File::open(path)?);
    let head = file.fill_buf()?;
    let bom = head.starts_with(UTF8_BOM);
    if head.starts_with(&[0xff, 0xfe]) || head.starts_with(&[0xfe, 0xff]) {
        return Ok(Err(super::text::decode(head).err().unwrap_or_default()));
    }
    let mut lines = Lines::default();
    let mut offset = 0u64;
    // Bytes of a character cut by the end of the previous piece.
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let buf = file.fill_buf()?;
        if buf.is_empty() {
            break;
        }
        let n = buf.len();
        let piece: Vec<u8> = if carry.is_empty() {
            buf.to_vec()
        } else {
            let mut p = std::mem::take(&mut carry);
            p.extend_from_slice(buf);
            p
        };
        file.consume(n);
        let start = offset - (piece.len() - n) as u64;
        match std::str::from_utf8(&piece) {
            Ok(_) => {
                lines.count(&piece[(piece.len() - n)..]);
                offset += n as u64;
            }
            // A character cut at the end of the piece: the next completes it.
            Err(e) if e.error_len().is_none() => {
                let good = e.valid_up_to();
                lines.count(&piece[(piece.len() - n)..]);
                carry = piece[good..].to_vec();
                offset += n as u64;
            }
            Err(e) => return bad_byte(path, start + e.valid_up_to() as u64).map(Err),
        }
    }
    if !carry.is_empty() {
        return bad_byte(path, offset - carry.len() as u64).map(Err);
    }
    Ok(Ok(Checked {
        bom,
        lines: lines.finish(),
    }))
}

/// `text::decode`'s message for a file whose byte at `offset` is bad.
fn bad_byte(path: &Path, offset: u64) -> std::io::Result<String> {
    let mut bytes = Vec::new();
    File::open(path)?.take(offset + 1).read_to_end(&mut bytes)?;
    Ok(super::text::decode(&bytes)
        .err()
        .unwrap_or_else(|| format!("is not UTF-8 at offset {offset}")))
}

/// Counts line ends as `LineIndex` does, across pieces.
#[derive(Default)]
struct Lines {
    /// Line ends seen (a lone `\r` once the byte after it is known).
    ends: u64,
    /// The last byte seen was `\r`, not yet counted.
    cr: bool,
    /// Any byte at all.
    any: bool,
}

impl Lines {
    fn count(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.byte(b);
        }
    }

    fn byte(&mut self, b: u8) {
        self.any = true;
        match b {
            b'\n' => {
                self.ends += 1;
                self.cr = false;
            }
            b'\r' => {
                if self.cr {
                    self.ends += 1;
                }
                self.cr = true;
            }
            _ => {
                if self.cr {
                    self.ends += 1;
                }
                self.cr = false;
            }
        }
    }

    /// Lines in all: one more than the line ends (a file ending in a line
    /// end has an empty last line, as `LineIndex` has).
    fn finish(&self) -> u64 {
        self.ends + u64::from(self.cr) + u64::from(self.any)
    }
}

/// The line of a byte offset, for offsets asked in increasing order, by a
/// second reader of the file that counts line ends as it goes.
pub(crate) struct LineCounter {
    file: BufReader<File>,
    /// Bytes consumed (from where the reader started).
    pos: u64,
    lines: Lines,
}

impl LineCounter {
    /// Counts from `skip` bytes into the file (past a byte-order mark).
    pub fn open(path: &Path, skip: u64) -> std::io::Result<LineCounter> {
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(skip))?;
        Ok(LineCounter {
            file: BufReader::with_capacity(64 * 1024, file),
            pos: 0,
            lines: Lines::default(),
        })
    }

    fn peek(&mut self) -> std::io::Result<Option<u8>> {
        Ok(self.file.fill_buf()?.first().copied())
    }

    /// The 1-based line of the first byte at or after `at` that is not a
    /// line end (a CSV reader's row offset may point at the `\n` before the
    /// row). `at` must not be before the previous call's.
    pub fn line_of(&mut self, at: u64) -> std::io::Result<u64> {
        while self.pos < at {
            let buf = self.file.fill_buf()?;
            if buf.is_empty() {
                break;
            }
            let n = buf.len().min((at - self.pos) as usize);
            self.lines.count(&buf[..n]);
            self.file.consume(n);
            self.pos += n as u64;
        }
        while let Some(b @ (b'\r' | b'\n')) = self.peek()? {
            self.lines.byte(b);
            self.file.consume(1);
            self.pos += 1;
        }
        // A `\r` just before here ends a line unless a `\n` follows it.
        let lone_cr = self.lines.cr && self.peek()? != Some(b'\n');
        Ok(1 + self.lines.ends + u64::from(lone_cr))
    }
}
