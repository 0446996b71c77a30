//! The common case without a DOM: one pass over the bytes, no tape, no maps.
//!
//! [`decode`] reads the plain JSON that producers write (and `attrib gen` writes):
//! strings without escapes or control characters, integers of up to 18 digits without
//! a sign, `null`/`true`/`false`, unknown fields holding such scalars, and `items` as
//! an array of flat objects. It returns the event only when the input is such JSON *and*
//! the event passes every rule of SPEC §1; on anything else (malformed, unusual or
//! invalid input) it returns `None` and the caller runs the simd-json decoder, which
//! stays the only authority on what is rejected and why. So every dead letter keeps its
//! exact reason and message, and an accepted event is the same value either way: the
//! accepted grammar is a strict subset of JSON on which the two cannot disagree
//! (`tests::agrees_with_simd_json` and the decode fuzz target check it).

use super::{parse_rfc3339_ms, DecodeLimits, MAX_TS};
use crate::model::{Currency, Event, Item, Millis, Purchase, Refund, RefundItem, Str, Touch, TouchKind};

/// A scalar value as read.
#[derive(Clone, Copy)]
enum V<'a> {
    Str(&'a str),
    /// A non-negative integer (at most 18 digits: always an `i64`).
    Int(i64),
    Null,
    /// `true` or `false`.
    Bool,
    /// The `items` array: this many entries in the item buffer.
    Items(usize),
}

/// The fields of an item, in the reference decoder's slot order.
type ItemSlots<'a> = [Option<V<'a>>; 4];

/// Most items the fast path reads inline; longer purchases go to simd-json.
const INLINE_ITEMS: usize = 16;

struct Parser<'a> {
    text: &'a str,
    b: &'a [u8],
    i: usize,
}

impl<'a> Parser<'a> {
    #[inline]
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    #[inline]
    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }

    /// The eight bytes at `at` as a little-endian word; past the end of the input they
    /// read as zero (a control character and not a digit, so every scan stops there).
    /// `None` at the end of the input (and for inputs shorter than a word, which
    /// [`decode`] does not parse).
    #[inline]
    fn word_at(&self, at: usize) -> Option<u64> {
        if let Some(chunk) = self.b.get(at..).and_then(<[u8]>::first_chunk::<8>) {
            return Some(u64::from_le_bytes(*chunk));
        }
        // Fewer than eight bytes left: the input's last eight, shifted down.
        let rest = self.b.len().checked_sub(at).filter(|&n| n > 0)?;
        let last = self.b.last_chunk::<8>()?;
        Some(u64::from_le_bytes(*last) >> (8 * (8 - rest)))
    }

    /// A string without escapes or control characters; the cursor is on its `"`.
    #[inline(always)]
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.i;
        // Eight bytes at a time to the first `"`, `\\` or control character (the lowest
        // flagged byte of each test is exact); only a `"` ends the string.
        const ONES: u64 = 0x0101_0101_0101_0101;
        const HIGH: u64 = 0x8080_8080_8080_8080;
        let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
        loop {
            let w = self.word_at(self.i)?;
            let hit = zero(w ^ (ONES * u64::from(b'"')))
                | zero(w ^ (ONES * u64::from(b'\\')))
                | (w.wrapping_sub(ONES * 0x20) & !w & HIGH);
            if hit != 0 {
                let at = hit.trailing_zeros() & !7;
                if (w >> at) as u8 != b'"' {
                    return None;
                }
                self.i += (at / 8) as usize;
                break;
            }
            self.i += 8;
        }
        let s = self.text.split_at_checked(self.i)?.0.split_at_checked(start)?.1;
        self.i += 1;
        Some(s)
    }

    /// Whether the key at the cursor (on its `"`) is `name`, given with its closing
    /// quote so that a longer key does not pass for it.
    #[inline(always)]
    fn key_is<const N: usize>(&self, name: &[u8; N]) -> bool {
        self.b.get(self.i + 1..).and_then(<[u8]>::first_chunk::<N>) == Some(name)
    }

    /// `"key" :` and the whitespace after it: the slot of a key `F` knows (found from its
    /// first byte and one fixed-size compare, no scan), `usize::MAX` for other keys.
    #[inline(always)]
    fn key<F: Fields>(&mut self) -> Option<usize> {
        if self.peek()? != b'"' {
            return None;
        }
        let slot = match F::known(self, *self.b.get(self.i + 1)?) {
            Some((slot, quoted_len)) => {
                self.i += 1 + quoted_len;
                slot
            }
            None => {
                self.string()?;
                usize::MAX
            }
        };
        if self.peek()? == b':' {
            self.i += 1;
        } else {
            self.ws();
            self.eat(b':')?;
        }
        self.ws();
        Some(slot)
    }

    /// After a member: the next member's key as [`Parser::key`] reads it, or `None` at
    /// the closing `}`.
    #[inline(always)]
    fn next_key<F: Fields>(&mut self) -> Option<Option<usize>> {
        // The compact `,"key":` of most producers without a byte-by-byte walk.
        if let Some(&[b',', b'"', first]) = self.b.get(self.i..).and_then(<[u8]>::first_chunk::<3>) {
            self.i += 1;
            if let Some((slot, quoted_len)) = F::known(self, first) {
                if self.b.get(self.i + 1 + quoted_len) == Some(&b':') {
                    self.i += 2 + quoted_len;
                    self.ws();
                    return Some(Some(slot));
                }
            }
            return self.key::<F>().map(Some);
        }
        if !self.next_member()? {
            return Some(None);
        }
        self.key::<F>().map(Some)
    }

    /// A scalar value (not an array or object).
    #[inline(always)]
    fn scalar(&mut self) -> Option<V<'a>> {
        match self.peek()? {
            b'"' => self.string().map(V::Str),
            b'0'..=b'9' => self.int().map(V::Int),
            b'n' => self.word(b"null", V::Null),
            b't' => self.word(b"true", V::Bool),
            b'f' => self.word(b"false", V::Bool),
            _ => None,
        }
    }

    #[inline]
    fn word(&mut self, w: &[u8], v: V<'a>) -> Option<V<'a>> {
        self.b.get(self.i..)?.starts_with(w).then(|| {
            self.i += w.len();
            v
        })
    }

    /// `0` or `[1-9][0-9]{0,17}`, not followed by a fraction or an exponent.
    #[inline(always)]
    fn int(&mut self) -> Option<i64> {
        let start = self.i;
        let mut n: u64 = 0;
        // Up to eight digits per word: count them, then add them up in three multiplies.
        loop {
            let w = self.word_at(self.i).unwrap_or(0);
            let k = leading_digits(w);
            if self.i - start + k > 18 {
                return None;
            }
            n = n * POW10[k] + digits_value(w, k);
            self.i += k;
            if k < 8 {
                break;
            }
        }
        let digits = self.i - start;
        if (digits > 1 && self.b[start] == b'0') || matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        // At most 18 digits: below 10^18 < 2^63.
        Some(n as i64)
    }

    /// After a member: `,` (another follows: true) or the closing `}` (false).
    #[inline]
    fn next_member(&mut self) -> Option<bool> {
        let mut c = self.peek()?;
        if matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
            self.ws();
            c = self.peek()?;
        }
        match c {
            b',' => {
                self.i += 1;
                self.ws();
                Some(true)
            }
            b'}' => {
                self.i += 1;
                Some(false)
            }
            _ => None,
        }
    }

    /// A flat object of an item; the cursor is on its `{`.
    fn item(&mut self) -> Option<ItemSlots<'a>> {
        self.eat(b'{')?;
        self.ws();
        let mut slots: ItemSlots<'a> = [None; 4];
        if self.eat(b'}').is_some() {
            return Some(slots);
        }
        let mut slot = self.key::<ItemFields>()?;
        loop {
            let v = self.scalar()?;
            if let Some(s) = slots.get_mut(slot) {
                if s.replace(v).is_some() {
                    return None; // given twice: the reference names it
                }
            }
            match self.next_key::<ItemFields>()? {
                Some(next) => slot = next,
                None => return Some(slots),
            }
        }
    }

    /// The `items` array; the cursor is on its `[`.
    fn items(&mut self, out: &mut [ItemSlots<'a>; INLINE_ITEMS]) -> Option<usize> {
        self.eat(b'[')?;
        self.ws();
        if self.eat(b']').is_some() {
            return Some(0);
        }
        let mut n = 0;
        loop {
            *out.get_mut(n)? = self.item()?;
            n += 1;
            self.ws();
            match self.peek()? {
                b',' => {
                    self.i += 1;
                    self.ws();
                }
                b']' => {
                    self.i += 1;
                    return Some(n);
                }
                _ => return None,
            }
        }
    }
}

const POW10: [u64; 9] = [1, 10, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000, 100_000_000];

/// How many of the eight bytes of `w` (first byte lowest) are ASCII digits before the
/// first other byte.
#[inline]
fn leading_digits(w: u64) -> usize {
    // The high bit of a byte is set by the add for bytes from `:` up and by the subtract
    // for bytes below `0` (and from 0xB0 up). Digits neither carry nor borrow, so the
    // lowest flagged byte is exact.
    let flagged =
        (w.wrapping_add(0x4646_4646_4646_4646) | w.wrapping_sub(0x3030_3030_3030_3030)) & 0x8080_8080_8080_8080;
    (flagged.trailing_zeros() / 8) as usize
}

/// The number written by the first `k` bytes of `w` (ASCII digits, first byte lowest).
#[inline]
fn digits_value(w: u64, k: usize) -> u64 {
    // Shift the digits to the top: the bytes shifted in read as leading zeros.
    let v = w.checked_shl(64 - 8 * k as u32).unwrap_or(0);
    // Pairs, then quadruples, then all eight (the SWAR sum of simdjson's
    // `parse_eight_digits_unrolled`).
    let v = (v & 0x0F0F_0F0F_0F0F_0F0F).wrapping_mul(2561) >> 8;
    let v = (v & 0x00FF_00FF_00FF_00FF).wrapping_mul(6_553_601) >> 16;
    (v & 0x0000_FFFF_0000_FFFF).wrapping_mul(42_949_672_960_001) >> 32
}

// Slots of the event object's fields: the reference decoder's, so both fill the same table.
use super::{CONTENT_ID, CREATOR_ID, CURRENCY, EVENT_ID, ITEMS, ORDER_ID, PRODUCT_ID, SURFACE, TS, TYPE, USER_ID};

/// The known keys of an object: their slots.
trait Fields {
    /// The slot and quoted length of the key at the cursor (on its `"`, followed by
    /// `first`) if it is a known one; one fixed-size compare, no scan.
    fn known(p: &Parser<'_>, first: u8) -> Option<(usize, usize)>;
}

/// The event object.
struct EventFields;

impl Fields for EventFields {
    #[inline(always)]
    fn known(p: &Parser<'_>, first: u8) -> Option<(usize, usize)> {
        match first {
            b't' if p.key_is(b"type\"") => Some((TYPE, 5)),
            b't' if p.key_is(b"ts\"") => Some((TS, 3)),
            b'e' if p.key_is(b"event_id\"") => Some((EVENT_ID, 9)),
            b'u' if p.key_is(b"user_id\"") => Some((USER_ID, 8)),
            b'c' if p.key_is(b"creator_id\"") => Some((CREATOR_ID, 11)),
            b'c' if p.key_is(b"content_id\"") => Some((CONTENT_ID, 11)),
            b'c' if p.key_is(b"currency\"") => Some((CURRENCY, 9)),
            b'p' if p.key_is(b"product_id\"") => Some((PRODUCT_ID, 11)),
            b's' if p.key_is(b"surface\"") => Some((SURFACE, 8)),
            b'o' if p.key_is(b"order_id\"") => Some((ORDER_ID, 9)),
            b'i' if p.key_is(b"items\"") => Some((ITEMS, 6)),
            _ => None,
        }
    }
}

/// An item of `items`, in the reference decoder's slot order.
struct ItemFields;

impl Fields for ItemFields {
    #[inline(always)]
    fn known(p: &Parser<'_>, first: u8) -> Option<(usize, usize)> {
        match first {
            b'p' if p.key_is(b"product_id\"") => Some((0, 11)),
            b'q' if p.key_is(b"quantity\"") => Some((1, 9)),
            b'u' if p.key_is(b"unit_price\"") => Some((2, 11)),
            b'c' if p.key_is(b"category\"") => Some((3, 9)),
            _ => None,
        }
    }
}

/// The event in `raw` if it is plain JSON and a valid event; `None` sends it to the
/// reference decoder (which also decides every rejection).
pub(super) fn decode(raw: &[u8], limits: &DecodeLimits) -> Option<Event> {
    // An event with items is 3 deep; tighter limits are the reference's business. No
    // event is shorter than a word, which the word-wise reads below rely on.
    if limits.max_depth < 3 || raw.len() < 8 {
        return None;
    }
    // simdutf8: the same answer as `std::str::from_utf8`, 16-32 bytes per step.
    let text = simdutf8::basic::from_utf8(raw).ok()?;
    let mut p = Parser { text, b: raw, i: 0 };
    let mut f: [Option<V<'_>>; 11] = [None; 11];
    // Cleared only for an event with items: 64 slots are most of the set-up otherwise.
    let mut items: Option<[ItemSlots<'_>; INLINE_ITEMS]> = None;
    p.ws();
    p.eat(b'{')?;
    p.ws();
    if p.eat(b'}').is_some() {
        return None; // no type: the reference says so
    }
    let mut slot = p.key::<EventFields>()?;
    loop {
        let v = match p.peek()? {
            b'[' if slot == ITEMS => V::Items(p.items(items.insert([[None; 4]; INLINE_ITEMS]))?),
            _ => p.scalar()?,
        };
        if let Some(s) = f.get_mut(slot) {
            if s.replace(v).is_some() {
                return None;
            }
        }
        match p.next_key::<EventFields>()? {
            Some(next) => slot = next,
            None => break,
        }
    }
    p.ws();
    if p.i != raw.len() {
        return None;
    }
    event(&f, &items, limits)
}

fn event(
    f: &[Option<V<'_>>; 11],
    items: &Option<[ItemSlots<'_>; INLINE_ITEMS]>,
    limits: &DecodeLimits,
) -> Option<Event> {
    let max_id = limits.max_id_bytes;
    let Some(V::Str(ty)) = f[TYPE] else { return None };
    let event_id = req_id(f[EVENT_ID], max_id)?;
    let ts = ts(f[TS])?;
    let user_id = req_id(f[USER_ID], max_id)?;
    match ty {
        "view" | "click" => {
            let kind = if ty == "view" { TouchKind::View } else { TouchKind::Click };
            let creator_id = req_id(f[CREATOR_ID], max_id)?;
            let product_id = opt_id(f[PRODUCT_ID], max_id)?;
            if !opt_id_valid(f[CONTENT_ID], max_id) {
                return None;
            }
            let surface = opt_id(f[SURFACE], max_id)?;
            Some(Event::Touch(Touch { kind, event_id, ts, user_id, creator_id, product_id, surface }))
        }
        "purchase" => {
            let order_id = req_id(f[ORDER_ID], max_id)?;
            let Some(V::Str(currency)) = f[CURRENCY] else { return None };
            let currency = Currency::parse(currency)?;
            let Some(V::Items(n)) = f[ITEMS] else { return None };
            if n == 0 || n > limits.max_items {
                return None;
            }
            let items = items.as_ref()?[..n].iter().map(|s| purchase_item(s, max_id)).collect::<Option<Vec<_>>>()?;
            Some(Event::Purchase(Purchase { event_id, ts, user_id, order_id, currency, items }))
        }
        "refund" => {
            let order_id = req_id(f[ORDER_ID], max_id)?;
            let items = match f[ITEMS] {
                None | Some(V::Null) => None,
                Some(V::Items(n)) if n > 0 && n <= limits.max_items => {
                    Some(items.as_ref()?[..n].iter().map(|s| refund_item(s, max_id)).collect::<Option<Vec<_>>>()?)
                }
                Some(_) => return None,
            };
            Some(Event::Refund(Refund { event_id, ts, user_id, order_id, items }))
        }
        _ => None,
    }
}

fn purchase_item(f: &ItemSlots<'_>, max_id: usize) -> Option<Item> {
    let product_id = req_id(f[0], max_id)?;
    let Some(V::Int(quantity)) = f[1] else { return None };
    let Some(V::Int(unit_price)) = f[2] else { return None };
    if quantity < 1 {
        return None;
    }
    quantity.checked_mul(unit_price)?;
    let category = opt_id(f[3], max_id)?;
    Some(Item { product_id, quantity, unit_price, category })
}

fn refund_item(f: &ItemSlots<'_>, max_id: usize) -> Option<RefundItem> {
    let product_id = req_id(f[0], max_id)?;
    let Some(V::Int(quantity)) = f[1] else { return None };
    (quantity >= 1).then_some(RefundItem { product_id, quantity })
}

#[inline]
fn req_id(v: Option<V<'_>>, max_id: usize) -> Option<Str> {
    match v? {
        V::Str(s) if !s.is_empty() && s.len() <= max_id => Some(Str::from(s)),
        _ => None,
    }
}

/// `Some(None)`: absent or `null`; `None`: invalid.
#[inline]
fn opt_id(v: Option<V<'_>>, max_id: usize) -> Option<Option<Str>> {
    match v {
        None | Some(V::Null) => Some(None),
        v => req_id(v, max_id).map(Some),
    }
}

/// Whether [`opt_id`] accepts `v`, without building the id (`content_id` is checked,
/// not kept).
#[inline]
fn opt_id_valid(v: Option<V<'_>>, max_id: usize) -> bool {
    match v {
        None | Some(V::Null) => true,
        Some(V::Str(s)) => !s.is_empty() && s.len() <= max_id,
        Some(_) => false,
    }
}

fn ts(v: Option<V<'_>>) -> Option<Millis> {
    let ts = match v? {
        V::Int(n) => n,
        V::Str(s) => parse_rfc3339_ms(s)?,
        _ => return None,
    };
    (0..=MAX_TS).contains(&ts).then_some(ts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Decoder;
    use crate::gen::{generate, GenKind, GenOptions};
    use proptest::prelude::*;

    const TIGHT: DecodeLimits = DecodeLimits { max_message_bytes: 400, max_items: 2, max_id_bytes: 8, max_depth: 3 };

    /// The whole decoder (fast path first) and the simd-json reference give the same result.
    fn agrees(raw: &[u8]) {
        for limits in [DecodeLimits::default(), TIGHT, DecodeLimits { max_depth: 2, ..DecodeLimits::default() }] {
            let mut d = Decoder::new(limits);
            let reference = d.decode_reference(raw);
            if let Some(fast) = decode(raw, &limits) {
                assert_eq!(Ok(&fast), reference.as_ref(), "fast path accepted {:?}", String::from_utf8_lossy(raw));
            }
            assert_eq!(d.decode(raw), reference, "{:?}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn gen_lines_take_the_fast_path_and_agree() {
        let opts =
            GenOptions { events: 30_000, duplicates: 0.02, invalid: 0.05, refunds: 0.3, ..GenOptions::default() };
        let limits = DecodeLimits::default();
        let mut d = Decoder::new(limits);
        let mut fast_hits = 0;
        generate(&opts, |kind, line| {
            let raw = line.strip_suffix(b"\n").unwrap_or(line);
            let reference = d.decode_reference(raw);
            match decode(raw, &limits) {
                Some(e) => {
                    assert_eq!(Ok(&e), reference.as_ref(), "{}", String::from_utf8_lossy(raw));
                    fast_hits += 1;
                }
                None => assert!(kind == GenKind::Invalid, "valid {kind:?} missed: {}", String::from_utf8_lossy(raw)),
            }
            assert_eq!(d.decode(raw), reference);
            Ok(())
        })
        .unwrap();
        assert!(fast_hits > 25_000, "{fast_hits}");
    }

    #[test]
    fn word_digits_match_a_byte_loop() {
        let mut words: Vec<[u8; 8]> = vec![*b"12345678", *b"1234567x", *b"0\0\0\0\0\0\0\0", *b"9/:09\xb0\xba\xff"];
        for b in 0..=255u8 {
            for at in 0..8 {
                let mut w = *b"98765432";
                w[at] = b;
                words.push(w);
            }
        }
        for w in words {
            let k = w.iter().take_while(|b| b.is_ascii_digit()).count();
            assert_eq!(leading_digits(u64::from_le_bytes(w)), k, "{w:?}");
            let n = w[..k].iter().fold(0, |n, d| n * 10 + u64::from(d - b'0'));
            assert_eq!(digits_value(u64::from_le_bytes(w), k), n, "{w:?}");
        }
    }

    const TEMPLATES: [&str; 5] = [
        r#"{"type":"click","event_id":"k-1","ts":1764400000000,"user_id":"u-42","creator_id":"c-7","product_id":"p-3","content_id":"x","surface":"video"}"#,
        r#"{"type":"view","event_id":"v","ts":"2025-11-29T07:06:40.5+01:00","user_id":"u","creator_id":"c","product_id":null,"n":[1]}"#,
        r#"{"type":"purchase","event_id":"o-1","ts":1764400600000,"user_id":"u-42","order_id":"ord-9","currency":"USD","items":[{"product_id":"p-3","quantity":2,"unit_price":1999,"category":"beauty"},{"product_id":"p","quantity":1,"unit_price":0}]}"#,
        r#"{"type":"refund","event_id":"r-1","ts":1764487000000,"user_id":"u-42","order_id":"ord-9","items":[{"product_id":"p-3","quantity":1,"unit_price":"x"}]}"#,
        r#" { "type" : "refund" , "event_id":"r-1","ts":0,"user_id":"é","order_id":"o","items":null,"x":true,"y":false } "#,
    ];

    #[test]
    fn edge_cases_agree() {
        let edits: &[(&str, &str)] = &[
            ("", ""),
            ("\"ts\":1764400000000", "\"ts\":-0"),
            ("\"ts\":1764400000000", "\"ts\":01"),
            ("\"ts\":1764400000000", "\"ts\":1.0"),
            ("\"ts\":1764400000000", "\"ts\":1e3"),
            ("\"ts\":1764400000000", "\"ts\":9999999999999999999"),
            ("\"ts\":1764400000000", "\"ts\":999999999999999999"),
            ("\"ts\":1764400000000", "\"ts\":253402300799999"),
            ("\"ts\":1764400000000", "\"ts\":253402300800000"),
            ("\"ts\":1764400000000", "\"ts\":0"),
            ("\"ts\":1764400000000", "\"ts\":00"),
            ("\"ts\":1764400000000", "\"ts\":12345678"),
            ("\"ts\":1764400000000", "\"ts\":1234567890123456"),
            ("\"ts\":1764400000000", "\"ts\":12345678901234567"),
            ("\"ts\":1764400000000", "\"ts\":123456789012345678"),
            ("\"ts\":1764400000000", "\"ts\":1234567890123456789"),
            ("\"ts\":1764400000000", "\"ts\":12345678e"),
            ("\"ts\":1764400000000", "\"ts\":1234567812345678."),
            ("\"unit_price\":1999", "\"unit_price\":99999999999999999"),
            ("\"unit_price\":1999", "\"unit_price\":1999 "),
            ("\"unit_price\":1999", "\"unit_price\":19990000000"),
            ("\"ts\":1764400000000", "\"ts\":\"2025-11-29T07:06:40Z\""),
            ("\"ts\":1764400000000", "\"ts\":true"),
            ("u-42", "u\\u0041"),
            ("u-42", "u\t42"),
            ("u-42", ""),
            ("u-42", "ü"),
            ("\"type\"", "\"type\":\"view\",\"type\""),
            ("\"quantity\":2", "\"quantity\":2,\"quantity\":2"),
            ("\"quantity\":2", "\"quantity\":0"),
            ("\"quantity\":2", "\"quantity\":\"2\""),
            ("\"unit_price\":1999", "\"unit_price\":999999999999999999"),
            ("\"items\":[", "\"items\":[1,"),
            ("\"items\":[", "\"items\":[{},"),
            ("\"items\":[", "\"items\":[ "),
            ("\"currency\":\"USD\"", "\"currency\":\"usd\""),
            ("\"currency\":\"USD\"", "\"currency\":null"),
            ("\"content_id\":\"x\"", "\"content_id\":\"\""),
            ("\"content_id\":\"x\"", "\"content_id\":{}"),
            ("\"content_id\":\"x\"", "\"content_id\":[]"),
            ("\"content_id\":\"x\"", "\"content_id\":nul"),
            ("\"content_id\":\"x\"", "\"content_id\":nullx"),
            ("\"content_id\":\"x\"", "\"content_id\":truex"),
            ("\"surface\":\"video\"", "\"surface\":\"video\"\"x\":1"),
            ("\"user_id\"", "\"user_id\"\n"),
            ("}", "},"),
            ("}", "}x"),
            ("{", "[{"),
            ("{\"type\"", "{\"TYPE\""),
            ("\"type\":\"refund\"", "\"type\":\"purchase\""),
            ("\"type\":\"purchase\"", "\"type\":\"refund\""),
            ("\"type\":\"click\"", "\"type\":\"purchase\""),
            ("\"category\":\"beauty\"", "\"category\":\"123456789\""),
            ("\"items\":null", "\"items\":[]"),
            ("\"items\":null", "\"items\":\"all\""),
            // Keys one byte off a known one, and known keys spaced out.
            ("\"type\"", "\"typ\""),
            ("\"type\"", "\"types\""),
            ("\"ts\"", "\"t\""),
            ("\"ts\"", "\"tsx\""),
            ("\"event_id\"", "\"event_i\""),
            ("\"creator_id\"", "\"creator_idd\""),
            ("\"creator_id\"", "\"content_id\""),
            ("\"quantity\"", "\"quantit\""),
            ("\"quantity\"", "\"quantity\\u0020\""),
            ("\"user_id\":", "\"user_id\" \t:\n "),
            ("\"type\":", "\"type\" "),
        ];
        for t in TEMPLATES {
            for (from, to) in edits {
                agrees(t.replacen(from, to, 1).as_bytes());
            }
            agrees(format!("{t}\u{0}").as_bytes());
            agrees(&t.as_bytes()[..t.len() - 1]);
        }
        let many: Vec<String> =
            (0..17).map(|i| format!(r#"{{"product_id":"p{i}","quantity":1,"unit_price":1}}"#)).collect();
        for n in [1, 2, 3, 16, 17] {
            agrees(
                format!(
                    r#"{{"type":"purchase","event_id":"e","ts":1,"user_id":"u","order_id":"o","currency":"USD","items":[{}]}}"#,
                    many[..n].join(",")
                )
                .as_bytes(),
            );
        }
        // Strings and numbers that run into the end of the input.
        for short in [&b"{\"ts\":1"[..], b"{\"ts\":\"", b"{\"ts\"", b"{\"", b"{\"type\":\"view", b"{\"type\":\"view\"}"]
        {
            agrees(short);
        }
        agrees(b"{}");
        agrees(b"");
        agrees(b"  ");
        agrees(b"{\"type\":\"view\xff\"}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]
        #[test]
        fn mutated_events_agree(
            t in 0..TEMPLATES.len(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), 0..3u8, prop::sample::select(
                b"\"\\{}[],:0123456789-.eE tnulrfa \x01\x7fx\xc3\xa9".to_vec())), 1..4),
        ) {
            let mut raw = TEMPLATES[t].as_bytes().to_vec();
            for (at, op, byte) in edits {
                let i = at.index(raw.len() + 1);
                match op {
                    0 => raw.insert(i, byte),
                    1 if i < raw.len() => { raw.remove(i); }
                    _ if i < raw.len() => raw[i] = byte,
                    _ => raw.push(byte),
                }
            }
            agrees(&raw);
        }
    }
}
