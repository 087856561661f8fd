//! A JSON case file read as a stream: a top-level array of cases (or
//! `{"cases": [...]}`) handed out one element at a time, each with where it
//! starts, so memory holds one record, not the file.
//!
//! Two passes, as for CSV: the first (`check`) reads the whole file through
//! serde_json with nothing kept, so a file that is not JSON, or not a list
//! of cases, is refused whole before anything is stored; the second
//! (`Elements`) cuts the checked text into its elements, which the intake
//! reads one by one with the messages a file read whole gets.

use std::fmt;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Bytes of a line after which a message gives an offset, not a column
/// (as `LineIndex::position`).
const LONG_LINE: u64 = 64 * 1024;

/// Checks that the file (UTF-8 already, `bom` bytes to skip) is a JSON
/// array of anything or an object with a `cases` array: the number of
/// elements, or why not (serde's message and where, as `line L, column C`).
pub(crate) fn check(path: &Path, bom: bool) -> std::io::Result<Result<usize, String>> {
    let reader = past_bom(path, bom)?;
    let mut de = serde_json::Deserializer::from_reader(reader);
    let checked = de.deserialize_any(Shape).and_then(|n| de.end().map(|()| n));
    match checked {
        Ok(n) => Ok(Ok(n)),
        Err(e) if e.is_io() => Err(std::io::Error::other(e)),
        Err(e) => {
            let message = e.to_string();
            let suffix = format!(" at line {} column {}", e.line(), e.column());
            let message = message.strip_suffix(&suffix).unwrap_or(&message).to_owned();
            let at = if e.line() == 0 {
                String::new()
            } else {
                format!(" ({})", describe_serde(path, bom, e.line(), e.column())?)
            };
            Ok(Err(super::text::tidy_reason(&format!(
                "not a JSON array of cases (or {{\"cases\": [...]}}): {message}{at}"
            ))))
        }
    }
}

/// The file, read from past its byte-order mark (3 bytes) when it has one.
fn past_bom(path: &Path, bom: bool) -> std::io::Result<BufReader<File>> {
    let mut file = File::open(path)?;
    if bom {
        file.seek(SeekFrom::Start(3))?;
    }
    Ok(BufReader::with_capacity(64 * 1024, file))
}

/// Where serde's position (lines counted by `\n`, its column in bytes) is,
/// said as `LineIndex::describe` says it: one more read of the file, on
/// this error path only.
fn describe_serde(path: &Path, bom: bool, line: usize, column: usize) -> std::io::Result<String> {
    let reader = past_bom(path, bom)?;
    let mut pos = Position::default();
    let mut newlines = 1;
    let mut bytes = reader.bytes();
    while newlines < line {
        match bytes.next().transpose()? {
            Some(b) => {
                pos.byte(b);
                newlines += usize::from(b == b'\n');
            }
            None => break,
        }
    }
    for _ in 0..column {
        match bytes.next().transpose()? {
            Some(b) => pos.byte(b),
            None => break,
        }
    }
    Ok(pos.describe())
}

/// What the first pass accepts: counts the elements of the array.
struct Shape;

impl<'de> Visitor<'de> for Shape {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a sequence")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<usize, A::Error> {
        count(seq)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<usize, A::Error> {
        let mut cases = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == "cases" {
                if cases.is_some() {
                    return Err(de::Error::duplicate_field("cases"));
                }
                cases = Some(map.next_value::<Cases>()?.0);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        cases.ok_or_else(|| de::Error::invalid_type(de::Unexpected::Map, &self))
    }
}

fn count<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<usize, A::Error> {
    let mut n = 0;
    while seq.next_element::<IgnoredAny>()?.is_some() {
        n += 1;
    }
    Ok(n)
}

/// The `cases` value of the wrapped shape: an array.
struct Cases(usize);

impl<'de> serde::Deserialize<'de> for Cases {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Cases, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = usize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a sequence")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<usize, A::Error> {
                count(seq)
            }
        }
        d.deserialize_seq(V).map(Cases)
    }
}

/// A position in the file as messages give it: counted as `LineIndex`
/// counts lines (`\n`, `\r\n`, a lone `\r`) and columns (characters).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Position {
    /// Bytes from the start of the text (after a byte-order mark).
    pub offset: u64,
    /// 1-based.
    pub line: u64,
    /// Characters before this one on its line.
    chars: u64,
    /// Bytes before this one on its line.
    line_bytes: u64,
    /// The byte before was a `\r` (a line end, unless `\n` follows).
    cr: bool,
}

impl Default for Position {
    fn default() -> Self {
        Position {
            offset: 0,
            line: 1,
            chars: 0,
            line_bytes: 0,
            cr: false,
        }
    }
}

impl Position {
    fn byte(&mut self, b: u8) {
        self.offset += 1;
        match b {
            b'\n' => self.new_line(),
            b'\r' => {
                if self.cr {
                    self.new_line();
                }
                self.cr = true;
                return;
            }
            _ => {
                if self.cr {
                    self.new_line();
                }
                self.line_bytes += 1;
                // A character starts at every byte but UTF-8's continuations.
                self.chars += u64::from(b & 0xc0 != 0x80);
            }
        }
        self.cr = false;
    }

    fn new_line(&mut self) {
        self.line += 1;
        self.chars = 0;
        self.line_bytes = 0;
    }

    /// The line and column of the next byte (a pending `\r` ends its line).
    fn settled(&self) -> (u64, Option<u64>) {
        if self.cr {
            (self.line + 1, Some(1))
        } else {
            (self.line, (self.line_bytes <= LONG_LINE).then_some(self.chars + 1))
        }
    }

    fn describe(&self) -> String {
        match self.settled() {
            (line, Some(column)) => format!("line {line}, column {column}"),
            (line, None) => format!("line {line}, offset {}", self.offset),
        }
    }
}

/// One element of the array: its text and where it starts.
pub(crate) struct Element {
    pub text: String,
    /// The line it starts on, and its column there (None far into a long
    /// line), as `LineIndex::position` gives them.
    pub line: u64,
    pub column: Option<u64>,
    /// Bytes from the start of the text to it.
    pub offset: u64,
}

/// The elements of a checked file, in order.
pub(crate) struct Elements {
    bytes: std::iter::Peekable<std::io::Bytes<BufReader<File>>>,
    pos: Position,
    /// Inside the array, past `[`.
    started: bool,
    done: bool,
}

impl Elements {
    /// Opens a file `check` accepted.
    pub fn open(path: &Path, bom: bool) -> std::io::Result<Elements> {
        let reader = past_bom(path, bom)?;
        Ok(Elements {
            bytes: reader.bytes().peekable(),
            pos: Position::default(),
            started: false,
            done: false,
        })
    }

    fn peek(&mut self) -> std::io::Result<Option<u8>> {
        match self.bytes.peek() {
            Some(Ok(b)) => Ok(Some(*b)),
            Some(Err(_)) => Err(self.bytes.next().and_then(Result::err).expect("an error was peeked")),
            None => Ok(None),
        }
    }

    fn next_byte(&mut self) -> std::io::Result<Option<u8>> {
        let b = self.bytes.next().transpose()?;
        if let Some(b) = b {
            self.pos.byte(b);
        }
        Ok(b)
    }

    fn skip_space(&mut self) -> std::io::Result<()> {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek()? {
            self.next_byte()?;
        }
        Ok(())
    }

    /// Reads one JSON value (checked already), into `out` when given.
    fn value(&mut self, mut out: Option<&mut Vec<u8>>) -> std::io::Result<()> {
        let mut depth = 0usize;
        let mut in_string = false;
        let mut escaped = false;
        loop {
            let Some(b) = self.peek()? else { return Ok(()) };
            if !in_string && depth == 0 && matches!(b, b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r') {
                return Ok(());
            }
            self.next_byte()?;
            if let Some(out) = out.as_deref_mut() {
                out.push(b);
            }
            if in_string {
                match b {
                    _ if escaped => escaped = false,
                    b'\\' => escaped = true,
                    b'"' => {
                        in_string = false;
                        if depth == 0 {
                            return Ok(());
                        }
                    }
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => in_string = true,
                b'{' | b'[' => depth += 1,
                b'}' | b']' => {
                    depth -= 1;
                    if depth == 0 {
                        return Ok(());
                    }
                }
                _ => {}
            }
        }
    }

    /// Moves to just past the array's `[`: the top level's, or the one of
    /// the `cases` key of the top-level object.
    fn start(&mut self) -> std::io::Result<()> {
        self.skip_space()?;
        if self.next_byte()? == Some(b'[') {
            return Ok(());
        }
        // `{`: keys and values until `cases`.
        loop {
            self.skip_space()?;
            let mut key = Vec::new();
            self.value(Some(&mut key))?;
            self.skip_space()?;
            self.next_byte()?; // `:`
            self.skip_space()?;
            if serde_json::from_slice::<String>(&key).is_ok_and(|k| k == "cases") {
                self.next_byte()?; // `[`
                return Ok(());
            }
            self.value(None)?;
            self.skip_space()?;
            if self.next_byte()? != Some(b',') {
                // `check` found a `cases` key; this is not reached.
                self.done = true;
                return Ok(());
            }
        }
    }

    /// The next element, or None after the last.
    pub fn next_element(&mut self) -> std::io::Result<Option<Element>> {
        if !self.started {
            self.started = true;
            self.start()?;
        }
        if self.done {
            return Ok(None);
        }
        self.skip_space()?;
        if self.peek()? == Some(b',') {
            self.next_byte()?;
            self.skip_space()?;
        }
        if matches!(self.peek()?, Some(b']') | None) {
            self.done = true;
            return Ok(None);
        }
        let (line, column) = self.pos.settled();
        let offset = self.pos.offset;
        let mut text = Vec::new();
        self.value(Some(&mut text))?;
        let text = String::from_utf8(text).map_err(std::io::Error::other)?;
        Ok(Some(Element {
            text,
            line,
            column,
            offset,
        }))
    }
}
