//! How a raw block's lines are kept: split into their shape and their numbers, the numbers as
//! columns, the whole zstd-compressed.
//!
//! A block's lines (`{"t":…,"src":…,"e":<event>}`, one event name per block) share a handful of
//! shapes and differ in their numbers: times, ids, amounts. Plain zstd keeps ~17 bytes an event of
//! the reference stream, and a higher level barely helps (bench/README.md, "Raw blocks: does a
//! higher zstd level pay?"): what is left is the numbers' digits, which a byte-oriented compressor
//! cannot model. Here each line becomes a template (the line with every run of digits replaced by a
//! placeholder) and its numbers; a block keeps its templates once, a template id per line, and the
//! numbers of each template's placeholder `k` as one column, written as LEB128 varints of whichever
//! of three forms is smallest for that column: the value, its difference from the column's last
//! value (times), or its difference from the line's previous number (an id written twice).
//!
//! The encoding is lossless for any bytes, not only JSON: a run of digits is a number of at most 18
//! digits (longer runs are split), leading zeros stay in the template as text, and template bytes
//! that would read as a placeholder are escaped. A block whose lines share few shapes (more than a
//! quarter distinct) is kept as a plain zstd frame instead, and [`decode`] reads both: the blocks
//! written before this encoding are plain zstd frames too.
//!
//! Layout: `MAGIC`, varint decoded length, varint body length (uncompressed), then the body as
//! one zstd frame:
//! `templates: varint n, (varint len, bytes)*`, `lines: varint n, varint template id*`, then per
//! template in id order, per placeholder: `mode: u8, varint value*` (one per line of the template).

use foldhash::HashMap;

/// First bytes of an encoded block. A zstd frame starts with `28 b5 2f fd`.
const MAGIC: &[u8; 4] = b"JRB1";
/// In a template: a number's place.
const PLACEHOLDER: u8 = 0xff;
/// In a template: the next byte is literal (`0xfe` or `0xff` in the line).
const ESCAPE: u8 = 0xfe;
/// The most a block decodes to: a block holds one request's or record batch's events.
pub const MAX_BLOCK_BYTES: usize = 1 << 30;
/// Digits per number: 10^18 fits a u64 with room for the differences.
const MAX_DIGITS: usize = 18;

/// The bytes a template does not copy as they are: digits, line ends, bytes to escape.
const SPECIAL: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = (b as u8).is_ascii_digit() || b == b'\n' as usize || b >= ESCAPE as usize;
        b += 1;
    }
    t
};

/// Where the next digit, line end or byte to escape may be, from `i`: eight bytes at a time (a
/// profile of HTTP ingest found the byte-by-byte scan 5 % of the samples). It may stop early at a
/// byte with its high bit set (the caller checks it) but never passes a byte of [`SPECIAL`].
fn next_special(bytes: &[u8], mut i: usize) -> usize {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGH: u64 = ONES * 0x80;
    while let Some(word) = bytes.get(i..i + 8) {
        let w = u64::from_le_bytes(word.try_into().expect("eight bytes"));
        // Per byte below 0x80: ('9' + 1 + 127 - b) and (b + 127 - ('0' - 1)) both reach 0x80 for
        // a digit; no byte's sum carries into the next one's.
        let low = w & (ONES * 0x7f);
        let digit =
            (ONES * (127 + u64::from(b'9') + 1)).wrapping_sub(low) & (low + ONES * (127 - u64::from(b'0') + 1)) & !w;
        let x = w ^ (ONES * u64::from(b'\n'));
        let newline = x.wrapping_sub(ONES) & !x;
        let hits = (digit | newline | w) & HIGH;
        if hits != 0 {
            return i + (hits.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    i + bytes[i..].iter().position(|&b| SPECIAL[usize::from(b)]).unwrap_or(bytes.len() - i)
}

/// A column's form: the value, or its difference from the column's last value, or from the
/// line's previous number.
const RAW: u8 = 0;
const DELTA_COLUMN: u8 = 1;
const DELTA_LINE: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("the block decodes to more than {0} bytes")]
    TooLarge(usize),
    #[error("zstd: {0}")]
    Zstd(#[from] std::io::Error),
    #[error("the block is malformed: {0}")]
    Malformed(&'static str),
}

/// Encodes a block's NDJSON (see the module's documentation).
pub fn encode(ndjson: &[u8]) -> Vec<u8> {
    // Each thread keeps its encoder's buffers: a block's tokens, body and compressed body would
    // otherwise be eight allocations a block on the request's path.
    thread_local! {
        static ENCODER: std::cell::RefCell<Encoder> = std::cell::RefCell::new(Encoder::default());
    }
    ENCODER.with(|e| {
        let mut enc = e.borrow_mut();
        enc.tokenize(ndjson);
        let block = if enc.templates.len() * 4 > enc.line_template.len() + 16 {
            compress(ndjson)
        } else {
            enc.finish(ndjson.len())
        };
        if ndjson.len() > KEEP_BUFFERS_BELOW {
            *enc = Encoder::default();
        }
        block
    })
}

/// A thread's encoder keeps its buffers for the next block unless this one was larger (a body
/// of ~7,000 events).
const KEEP_BUFFERS_BELOW: usize = 1 << 20;

/// The block's NDJSON, whichever way it was kept; at most `max_bytes` of it.
pub fn decode(block: &[u8], max_bytes: usize) -> Result<Vec<u8>, DecodeError> {
    let Some(rest) = block.strip_prefix(MAGIC) else {
        return zstd::bulk::decompress(block, max_bytes).map_err(DecodeError::Zstd);
    };
    let mut r = Reader(rest);
    let len = r.len()?;
    if len > max_bytes {
        return Err(DecodeError::TooLarge(max_bytes));
    }
    let body_len = r.len()?;
    // A template's bytes take at most twice the line's (escapes), a number's varint at most its
    // digits, plus a byte or a few per line, template and column.
    if body_len > len.saturating_mul(4).saturating_add(1024) {
        return Err(DecodeError::Malformed("body length"));
    }
    let body = zstd::bulk::decompress(r.0, body_len)?;
    if body.len() != body_len {
        return Err(DecodeError::Malformed("body length"));
    }
    let out = Decoder::read(&body, len)?;
    if out.len() != len {
        return Err(DecodeError::Malformed("decoded length"));
    }
    Ok(out)
}

thread_local! {
    /// Level 1 with a context per thread: making one per block (`zstd::bulk::compress`) was 1.3 %
    /// of HTTP ingest's CPU, its allocation and zeroing more (bench/README.md).
    static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> = const { std::cell::RefCell::new(None) };
}

fn compressor<'a>(c: &'a mut Option<zstd::bulk::Compressor<'static>>) -> &'a mut zstd::bulk::Compressor<'static> {
    c.get_or_insert_with(|| zstd::bulk::Compressor::new(1).expect("a level-1 zstd context"))
}

fn compress(bytes: &[u8]) -> Vec<u8> {
    COMPRESSOR.with(|c| compressor(&mut c.borrow_mut()).compress(bytes).expect("compressing to memory cannot fail"))
}

#[derive(Default)]
struct Encoder {
    templates: HashMap<Vec<u8>, u32>,
    /// Each template's placeholders, in id order.
    arity: Vec<usize>,
    line_template: Vec<u32>,
    /// Where each line's numbers start in `numbers`.
    line_start: Vec<usize>,
    numbers: Vec<u64>,
    scratch: Vec<u8>,
    /// The lines by template (`lines[starts[t]..starts[t + 1]]`), for the body's columns.
    lines: Vec<u32>,
    starts: Vec<usize>,
    body: Vec<u8>,
    compressed: Vec<u8>,
}

impl Encoder {
    /// One pass over the block: text is copied in pieces up to the next digit, byte to escape or
    /// line end (a profile of a line-by-line `split` first spent a third of the time finding lines).
    fn tokenize(&mut self, ndjson: &[u8]) {
        let enc = self;
        enc.templates.clear();
        enc.arity.clear();
        enc.line_template.clear();
        enc.line_start.clear();
        enc.numbers.clear();
        enc.scratch.clear();
        // About an event line's bytes and its numbers' share of them, to allocate once.
        enc.line_template.reserve(ndjson.len() / 96 + 1);
        enc.line_start.reserve(ndjson.len() / 96 + 1);
        enc.numbers.reserve(ndjson.len() / 16 + 1);
        enc.line_start.push(0);
        let mut i = 0;
        loop {
            let stop = next_special(ndjson, i);
            enc.scratch.extend_from_slice(&ndjson[i..stop]);
            i = stop;
            match ndjson.get(i) {
                None => {
                    enc.end_line();
                    return;
                }
                Some(b'\n') => {
                    enc.end_line();
                    enc.line_start.push(enc.numbers.len());
                    i += 1;
                }
                Some(&b) if b >= ESCAPE => {
                    enc.scratch.extend_from_slice(&[ESCAPE, b]);
                    i += 1;
                }
                Some(&b) if !b.is_ascii_digit() => {
                    // A byte `next_special` could not rule out (a UTF-8 byte): text.
                    enc.scratch.push(b);
                    i += 1;
                }
                Some(_) => i = enc.digits(ndjson, i),
            }
        }
    }

    /// The run of digits at `i` as numbers; where the run ends.
    fn digits(&mut self, bytes: &[u8], mut i: usize) -> usize {
        let end = i + bytes[i..].iter().take_while(|b| b.is_ascii_digit()).count();
        while i < end {
            // Leading zeros are text: "05" is "0" and the number 5, "00" is "0" and 0.
            while bytes[i] == b'0' && i + 1 < end {
                self.scratch.push(b'0');
                i += 1;
            }
            let stop = end.min(i + MAX_DIGITS);
            let n = bytes[i..stop].iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            self.numbers.push(n);
            self.scratch.push(PLACEHOLDER);
            i = stop;
        }
        end
    }

    fn end_line(&mut self) {
        let id = match self.templates.get(self.scratch.as_slice()) {
            Some(&id) => id,
            None => {
                let id = self.templates.len() as u32;
                self.templates.insert(self.scratch.clone(), id);
                self.arity.push(self.numbers.len() - self.line_start.last().copied().unwrap_or(0));
                id
            }
        };
        self.line_template.push(id);
        self.scratch.clear();
    }

    /// The block: header and compressed body.
    fn finish(&mut self, decoded_len: usize) -> Vec<u8> {
        self.write_body();
        let (body, compressed) = (&self.body, &mut self.compressed);
        compressed.clear();
        compressed.reserve(zstd::zstd_safe::compress_bound(body.len()));
        COMPRESSOR.with(|c| {
            let mut c = c.borrow_mut();
            compressor(&mut c).compress_to_buffer(body, compressed).expect("the buffer holds zstd's bound")
        });
        let mut out = Vec::with_capacity(compressed.len() + 24);
        out.extend_from_slice(MAGIC);
        put_varint(&mut out, decoded_len as u64);
        put_varint(&mut out, body.len() as u64);
        out.extend_from_slice(compressed);
        out
    }

    fn write_body(&mut self) {
        let out = &mut self.body;
        out.clear();
        let mut templates: Vec<(&Vec<u8>, u32)> = self.templates.iter().map(|(t, &id)| (t, id)).collect();
        templates.sort_unstable_by_key(|&(_, id)| id);
        put_varint(out, templates.len() as u64);
        for (t, _) in &templates {
            put_varint(out, t.len() as u64);
            out.extend_from_slice(t);
        }
        put_varint(out, self.line_template.len() as u64);
        // The lines of each template in order: a counting sort by template id.
        self.starts.clear();
        self.starts.resize(templates.len() + 1, 0);
        for &t in &self.line_template {
            put_varint(out, u64::from(t));
            self.starts[t as usize + 1] += 1;
        }
        for t in 0..templates.len() {
            self.starts[t + 1] += self.starts[t];
        }
        self.lines.clear();
        self.lines.resize(self.line_template.len(), 0);
        let mut next = self.starts.clone();
        for (line, &t) in self.line_template.iter().enumerate() {
            self.lines[next[t as usize]] = line as u32;
            next[t as usize] += 1;
        }
        let at = |line: u32, k: usize| self.numbers[self.line_start[line as usize] + k];
        for (t, &arity) in self.arity.iter().enumerate() {
            let lines = &self.lines[self.starts[t]..self.starts[t + 1]];
            for k in 0..arity {
                let mode = best_mode(lines.iter().map(|&l| (at(l, k), (k > 0).then(|| at(l, k - 1)))));
                out.push(mode);
                let mut last = 0u64;
                for &l in lines {
                    let v = at(l, k);
                    let w = match mode {
                        RAW => v,
                        DELTA_COLUMN => zigzag(v, last),
                        _ => zigzag(v, at(l, k - 1)),
                    };
                    last = v;
                    put_varint(out, w);
                }
            }
        }
    }
}

/// The form whose varints take fewest bytes: `(value, the line's previous number)` per line. A
/// column that repeats the line's previous number in nine lines of ten takes the line's form even
/// at equal bytes (small ids): a column of zeros compresses to nothing.
fn best_mode(values: impl Iterator<Item = (u64, Option<u64>)>) -> u8 {
    let (mut raw, mut column, mut line, mut last) = (0usize, 0usize, 0usize, 0u64);
    let (mut n, mut repeats) = (0usize, 0usize);
    let mut line_ok = true;
    for (v, prev) in values {
        raw += varint_len(v);
        column += varint_len(zigzag(v, last));
        match prev {
            Some(p) => {
                line += varint_len(zigzag(v, p));
                repeats += usize::from(v == p);
            }
            None => line_ok = false,
        }
        last = v;
        n += 1;
    }
    if line_ok && (line < column.min(raw) || repeats * 10 >= n * 9) {
        DELTA_LINE
    } else if column < raw {
        DELTA_COLUMN
    } else {
        RAW
    }
}

/// `v - base` as a zigzag varint value (numbers are below 10^18, so the difference fits an i64).
fn zigzag(v: u64, base: u64) -> u64 {
    let d = v.wrapping_sub(base) as i64;
    ((d << 1) ^ (d >> 63)) as u64
}

fn unzigzag(z: u64, base: u64) -> u64 {
    let d = ((z >> 1) as i64) ^ -((z & 1) as i64);
    base.wrapping_add(d as u64)
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for (i, &b) in self.0.iter().enumerate().take(10) {
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                self.0 = &self.0[i + 1..];
                return Ok(v);
            }
        }
        Err(DecodeError::Malformed("varint"))
    }

    fn len(&mut self) -> Result<usize, DecodeError> {
        usize::try_from(self.varint()?).map_err(|_| DecodeError::Malformed("length"))
    }

    fn bytes(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        if n > self.0.len() {
            return Err(DecodeError::Malformed("truncated"));
        }
        let (b, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(b)
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        Ok(self.bytes(1)?[0])
    }
}

/// A template as literal pieces around its placeholders (`pieces.len() == placeholders + 1`).
struct Template {
    pieces: Vec<Vec<u8>>,
}

impl Template {
    fn parse(t: &[u8]) -> Result<Self, DecodeError> {
        let mut pieces = vec![Vec::new()];
        let mut i = 0;
        while i < t.len() {
            match t[i] {
                PLACEHOLDER => pieces.push(Vec::new()),
                ESCAPE => {
                    i += 1;
                    let b = *t.get(i).ok_or(DecodeError::Malformed("escape"))?;
                    pieces.last_mut().expect("one piece at least").push(b);
                }
                b => pieces.last_mut().expect("one piece at least").push(b),
            }
            i += 1;
        }
        Ok(Self { pieces })
    }
}

struct Decoder;

impl Decoder {
    fn read(body: &[u8], max: usize) -> Result<Vec<u8>, DecodeError> {
        let mut r = Reader(body);
        let n = r.len()?;
        if n > body.len() {
            return Err(DecodeError::Malformed("template count"));
        }
        let mut templates = Vec::with_capacity(n);
        for _ in 0..n {
            let len = r.len()?;
            templates.push(Template::parse(r.bytes(len)?)?);
        }
        let lines = r.len()?;
        if lines > body.len() {
            return Err(DecodeError::Malformed("line count"));
        }
        let mut line_template = Vec::with_capacity(lines);
        let mut count = vec![0usize; templates.len()];
        for _ in 0..lines {
            let t = r.len()?;
            *count.get_mut(t).ok_or(DecodeError::Malformed("template id"))? += 1;
            line_template.push(t);
        }
        // columns[t][k][i]: placeholder k of template t's i-th line.
        let mut columns: Vec<Vec<Vec<u64>>> = Vec::with_capacity(templates.len());
        for (t, tpl) in templates.iter().enumerate() {
            let mut cols: Vec<Vec<u64>> = Vec::with_capacity(tpl.pieces.len() - 1);
            for _ in 1..tpl.pieces.len() {
                let mode = r.byte()?;
                let mut col = Vec::with_capacity(count[t].min(r.0.len()));
                let mut last = 0u64;
                // The line's previous number: the column before this one, line by line.
                let mut before = cols.last().map(|c| c.iter().copied());
                for _ in 0..count[t] {
                    let w = r.varint()?;
                    let v = match (mode, before.as_mut().and_then(Iterator::next)) {
                        (RAW, _) => w,
                        (DELTA_COLUMN, _) => unzigzag(w, last),
                        (DELTA_LINE, Some(p)) => unzigzag(w, p),
                        _ => return Err(DecodeError::Malformed("column form")),
                    };
                    last = v;
                    col.push(v);
                }
                cols.push(col);
            }
            columns.push(cols);
        }
        let mut out = Vec::with_capacity(max.min(body.len() * 8));
        let mut cursor = vec![0usize; templates.len()];
        let mut digits = itoa::Buffer::new();
        for (i, &t) in line_template.iter().enumerate() {
            if i > 0 {
                out.push(b'\n');
            }
            let tpl = &templates[t];
            let row = cursor[t];
            cursor[t] += 1;
            out.extend_from_slice(&tpl.pieces[0]);
            for (k, piece) in tpl.pieces[1..].iter().enumerate() {
                out.extend_from_slice(digits.format(columns[t][k][row]).as_bytes());
                out.extend_from_slice(piece);
            }
            if out.len() > max {
                return Err(DecodeError::TooLarge(max));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The columnar form, whatever the shapes.
    fn columnar(ndjson: &[u8]) -> Vec<u8> {
        let mut enc = Encoder::default();
        enc.tokenize(ndjson);
        enc.finish(ndjson.len())
    }

    fn round_trip(ndjson: &[u8]) -> Vec<u8> {
        let block = encode(ndjson);
        decode(&block, ndjson.len()).expect("an encoded block decodes")
    }

    #[test]
    fn event_lines_round_trip_and_shrink() {
        let mut ndjson = Vec::new();
        for i in 0..2_000u64 {
            let id = (i * 7919) % 100_003;
            ndjson.extend_from_slice(
                format!(
                    "{{\"t\":{},\"src\":\"http\",\"e\":{{\"event_name\":\"productSold\",\"name_of_product\":\"product {id}\",\"product_id\":{id},\"no_of_units\":{},\"amount\":\"{}.{:02}\",\"timestamp\":{}}}}}\n",
                    1_764_800_000_000u64 + i / 500,
                    i % 9 + 1,
                    i % 500,
                    i % 100,
                    1_764_790_000_000u64 + i * 3_600 + (i * 31) % 5_000,
                )
                .as_bytes(),
            );
        }
        let block = encode(&ndjson);
        assert!(block.starts_with(MAGIC));
        assert_eq!(decode(&block, ndjson.len()).unwrap(), ndjson);
        let plain = compress(&ndjson);
        assert!(block.len() * 3 < plain.len() * 2, "{} bytes against plain zstd's {}", block.len(), plain.len());
        assert!(matches!(decode(&block, ndjson.len() - 1), Err(DecodeError::TooLarge(_))));
    }

    #[test]
    fn numbers_at_the_edges_round_trip() {
        for s in [
            &b""[..],
            b"\n",
            b"0",
            b"00",
            b"007",
            b"1.05e-0003",
            b"99999999999999999999999999999999999999999",
            b"100000000000000000000000000000000000",
            b"18446744073709551615 -9223372036854775808",
            b"\xfe\xff\xff1\xfe2",
            b"a\n\nb1\n",
        ] {
            assert_eq!(round_trip(s), s, "{:?}", String::from_utf8_lossy(s));
            assert_eq!(decode(&columnar(s), s.len()).unwrap(), s);
        }
    }

    #[test]
    fn the_word_scan_stops_where_the_byte_scan_does() {
        let bytes: Vec<u8> = (0..=255u8).collect();
        for start in 0..bytes.len() {
            for probe in
                [&bytes[start..], &b"abcdefghijklmnopqrstuvwx/:\x7f\x0b\x09ABC"[..], &b"\"key\":\"value\"}\n"[..]]
            {
                let slow = probe.iter().position(|&b| SPECIAL[usize::from(b)]).unwrap_or(probe.len());
                let fast = next_special(probe, 0);
                assert!(fast <= slow, "{probe:?}: passed a special byte");
                assert!(fast == slow || probe[fast] >= 0x80, "{probe:?}: stopped at {fast}, not {slow}");
            }
        }
    }

    #[test]
    fn plain_zstd_blocks_still_decode() {
        let lines = b"{\"t\":1,\"e\":{}}\n";
        assert_eq!(decode(&compress(lines), 100).unwrap(), lines);
    }

    #[test]
    fn lines_of_many_shapes_are_kept_as_plain_zstd() {
        let ndjson: Vec<u8> = (0..100).flat_map(|i| format!("{{\"k{}\":1}}\n", "x".repeat(i)).into_bytes()).collect();
        let block = encode(&ndjson);
        assert!(!block.starts_with(MAGIC));
        assert_eq!(decode(&block, ndjson.len()).unwrap(), ndjson);
    }

    #[test]
    fn a_damaged_block_is_an_error_not_a_panic() {
        let ndjson = b"{\"a\":12,\"b\":34}\n{\"a\":13,\"b\":35}\n".repeat(20);
        let block = encode(&ndjson);
        for cut in 0..block.len() {
            let _ = decode(&block[..cut], 1 << 20);
        }
        let mut body = Vec::new();
        put_varint(&mut body, 1);
        put_varint(&mut body, 1);
        body.push(PLACEHOLDER);
        put_varint(&mut body, 1);
        put_varint(&mut body, 0);
        body.push(DELTA_LINE);
        put_varint(&mut body, 5);
        assert!(matches!(Decoder::read(&body, 100), Err(DecodeError::Malformed("column form"))));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn any_bytes_round_trip(bytes in proptest::collection::vec(prop_oneof![
            Just(b'0'), Just(b'1'), Just(b'9'), Just(b'\n'), Just(b'"'), Just(0xfe), Just(0xff), any::<u8>()
        ], 0..400)) {
            prop_assert_eq!(round_trip(&bytes), bytes.clone());
            let block = columnar(&bytes);
            prop_assert_eq!(decode(&block, bytes.len()).unwrap(), bytes);
        }

        #[test]
        fn lines_of_one_shape_round_trip(rows in proptest::collection::vec((any::<u64>(), 0u64..1000, any::<u32>()), 1..200)) {
            let ndjson: Vec<u8> = rows.iter().flat_map(|(a, b, c)| format!("{{\"a\":{a},\"b\":\"x{b}\",\"c\":{c}.0{b}}}\n").into_bytes()).collect();
            let block = encode(&ndjson);
            prop_assert!(block.starts_with(MAGIC));
            prop_assert_eq!(decode(&block, ndjson.len()).unwrap(), ndjson);
        }
    }
}
