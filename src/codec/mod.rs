//! Bytes to events: simd-json parsing plus every validation rule of SPEC §1.
//!
//! [`Decoder::decode`] never panics on input; anything that breaks a rule comes back as a
//! [`DecodeError`] whose `reason` is the dead-letter reason and whose message names the
//! field. Records go the other way through [`encode_record`].

mod encode;
mod fast;

pub use encode::{encode_owned, encode_record, Encoder};

use simd_json::prelude::*;
use simd_json::BorrowedValue;

use crate::model::{
    Currency, DeadLetterReason, Event, Item, Millis, Purchase, Refund, RefundItem, Str, Touch, TouchKind,
};

/// Longest id SPEC §1 allows, in bytes: the default (and the most) of
/// [`DecodeLimits::max_id_bytes`].
pub const MAX_ID_BYTES: usize = 256;

/// Latest accepted event time: 9999-12-31T23:59:59.999Z. Keeps window arithmetic far from
/// i64 overflow.
pub const MAX_TS: Millis = 253_402_300_799_999;

/// Why an input could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DecodeError {
    /// The dead-letter reason.
    pub reason: DeadLetterReason,
    /// What is wrong, naming the field.
    pub message: String,
}

impl DecodeError {
    fn event(message: impl Into<String>) -> DecodeError {
        DecodeError { reason: DeadLetterReason::InvalidEvent, message: message.into() }
    }
}

/// Size limits applied while decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DecodeLimits {
    /// Longest accepted message, in bytes.
    pub max_message_bytes: usize,
    /// Most items a purchase (or refund) may carry.
    pub max_items: usize,
    /// Longest id, in bytes (`limits.max_id_bytes`).
    pub max_id_bytes: usize,
    /// Deepest nesting of objects and arrays, the event object itself counting 1
    /// (`limits.max_json_depth`).
    pub max_depth: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits { max_message_bytes: 1024 * 1024, max_items: 1000, max_id_bytes: MAX_ID_BYTES, max_depth: 32 }
    }
}

/// Reusable decoder: keeps simd-json's scratch buffers between calls.
pub struct Decoder {
    limits: DecodeLimits,
    scratch: Vec<u8>,
    buffers: simd_json::Buffers,
}

type Obj<'a, 'v> = &'a simd_json::value::borrowed::Object<'v>;

impl Decoder {
    /// A decoder with the given limits.
    pub fn new(limits: DecodeLimits) -> Decoder {
        // simd-json's stage 2 enforces the depth limit as it builds the tape, at no cost.
        let buffers = simd_json::Buffers::with_max_depth(128, limits.max_depth);
        Decoder { limits, scratch: Vec::new(), buffers }
    }

    /// Decodes and validates one message (a Kafka value or a JSONL line without its newline).
    ///
    /// Plain events take the single-pass reader of [`fast`]; everything else, and every
    /// rejection, is the simd-json decoder's ([`Decoder::decode_reference`]).
    #[inline]
    pub fn decode(&mut self, raw: &[u8]) -> Result<Event, DecodeError> {
        if raw.len() <= self.limits.max_message_bytes {
            if let Some(event) = fast::decode(raw, &self.limits) {
                return Ok(event);
            }
        }
        self.decode_reference(raw)
    }

    /// [`Decoder::decode`] through simd-json alone: the reference the fast path is
    /// tested against, and the decoder of everything it passes on.
    pub fn decode_reference(&mut self, raw: &[u8]) -> Result<Event, DecodeError> {
        if raw.len() > self.limits.max_message_bytes {
            return Err(DecodeError {
                reason: DeadLetterReason::TooLarge,
                message: format!(
                    "message of {} bytes is over the limit of {} bytes",
                    raw.len(),
                    self.limits.max_message_bytes
                ),
            });
        }
        // The parser stops at the depth limit itself (see `Decoder::new`), but its first
        // stage still indexes every structural byte: 4 bytes of index per `[` of a hostile
        // `[[[[…`. Longer messages are therefore scanned first; typical events (a few
        // hundred bytes) skip the scan, which would cost them several per cent.
        if raw.len() > PRESCAN_BYTES && nesting_exceeds(raw, self.limits.max_depth) {
            return Err(too_deep(self.limits.max_depth));
        }
        // simd-json parses in place; the caller keeps the original bytes for dead letters.
        self.scratch.clear();
        self.scratch.extend_from_slice(raw);
        let value = simd_json::to_borrowed_value_with_buffers(&mut self.scratch, &mut self.buffers)
            .map_err(|e| parse_error(raw, &e, self.limits.max_depth))?;
        let obj = value.as_object().ok_or_else(|| DecodeError::event("event must be a JSON object"))?;
        event_from_object(obj, &self.limits)
    }
}

/// Messages longer than this are scanned for their nesting depth before they are parsed.
const PRESCAN_BYTES: usize = 4096;

fn too_deep(max_depth: usize) -> DecodeError {
    DecodeError {
        reason: DeadLetterReason::InvalidJson,
        message: format!("invalid JSON: nesting deeper than {max_depth} levels (limits.max_json_depth)"),
    }
}

/// Whether `raw` nests objects and arrays more than `max_depth` deep, counting brackets
/// outside strings (escapes honoured). Malformed input gets an answer too; the parser
/// rejects it afterwards.
fn nesting_exceeds(raw: &[u8], max_depth: usize) -> bool {
    // Depth never exceeds the number of opening brackets, and counting those vectorises
    // (`[` 0x5B and `{` 0x7B differ only in bit 0x20; byte counters, 16 or 32 to a
    // register, never overflow within 255 bytes): almost every event stops here.
    let opening: usize =
        raw.chunks(255).map(|c| usize::from(c.iter().fold(0u8, |n, &b| n + u8::from(b | 0x20 == b'{')))).sum();
    if opening <= max_depth {
        return false;
    }
    let mut depth = 0usize;
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'"' => {
                i += 1;
                while i < raw.len() {
                    match raw[i] {
                        b'"' => break,
                        b'\\' => i += 2,
                        _ => i += 1,
                    }
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > max_depth {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    false
}

fn event_from_object(obj: Obj<'_, '_>, limits: &DecodeLimits) -> Result<Event, DecodeError> {
    let max_id = limits.max_id_bytes;
    let f: [Option<&BorrowedValue<'_>>; 11] = pick(obj, event_slot, None)?;
    let ty = req_str(f[TYPE], "type")?;
    let event_id = req_id(f[EVENT_ID], Field::Top("event_id"), max_id)?;
    let ts = req_ts(f[TS])?;
    let user_id = req_id(f[USER_ID], Field::Top("user_id"), max_id)?;
    match ty {
        "view" | "click" => {
            let kind = if ty == "view" { TouchKind::View } else { TouchKind::Click };
            let creator_id = req_id(f[CREATOR_ID], Field::Top("creator_id"), max_id)?;
            let product_id = opt_id(f[PRODUCT_ID], Field::Top("product_id"), max_id)?;
            opt_id(f[CONTENT_ID], Field::Top("content_id"), max_id)?; // validated, not used by attribution
            let surface = opt_id(f[SURFACE], Field::Top("surface"), max_id)?;
            Ok(Event::Touch(Touch { kind, event_id, ts, user_id, creator_id, product_id, surface }))
        }
        "purchase" => {
            let order_id = req_id(f[ORDER_ID], Field::Top("order_id"), max_id)?;
            let currency_text = req_str(f[CURRENCY], "currency")?;
            let currency = Currency::parse(currency_text).ok_or_else(|| {
                DecodeError::event(format!(
                    "field `currency`: {:?} is not three upper-case letters (ISO 4217)",
                    truncate(currency_text)
                ))
            })?;
            let raw_items = req_array(f[ITEMS], "items")?;
            if raw_items.is_empty() {
                return Err(DecodeError::event("field `items`: a purchase needs at least one item"));
            }
            check_item_count(raw_items.len(), limits)?;
            let mut items = Vec::with_capacity(raw_items.len());
            for (i, v) in raw_items.iter().enumerate() {
                items.push(purchase_item(i, v, max_id)?);
            }
            Ok(Event::Purchase(Purchase { event_id, ts, user_id, order_id, currency, items }))
        }
        "refund" => {
            let order_id = req_id(f[ORDER_ID], Field::Top("order_id"), max_id)?;
            let items = match f[ITEMS] {
                None => None,
                Some(v) if v.is_null() => None,
                Some(v) => {
                    let raw_items =
                        v.as_array().ok_or_else(|| DecodeError::event("field `items`: must be an array"))?;
                    // An empty list is more likely a producer bug than "refund everything";
                    // refunding the whole order by accident would cost creators money.
                    if raw_items.is_empty() {
                        return Err(DecodeError::event("field `items`: empty; omit `items` to refund the whole order"));
                    }
                    check_item_count(raw_items.len(), limits)?;
                    let mut items = Vec::with_capacity(raw_items.len());
                    for (i, v) in raw_items.iter().enumerate() {
                        items.push(refund_item(i, v, max_id)?);
                    }
                    Some(items)
                }
            };
            Ok(Event::Refund(Refund { event_id, ts, user_id, order_id, items }))
        }
        other => Err(DecodeError::event(format!(
            "field `type`: {:?} is not one of view, click, purchase, refund",
            truncate(other)
        ))),
    }
}

/// Where a field sits, for messages; formatted only when something is wrong, so the
/// success path builds no strings.
#[derive(Clone, Copy)]
enum Field {
    /// A field of the event object.
    Top(&'static str),
    /// A field of `items[i]`.
    Item(usize, &'static str),
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Field::Top(key) => f.write_str(key),
            Field::Item(i, key) => write!(f, "items[{i}].{key}"),
        }
    }
}

type Slot<'a, 'v> = Option<&'a BorrowedValue<'v>>;

// Slots of the event object's fields.
const TYPE: usize = 0;
const EVENT_ID: usize = 1;
const TS: usize = 2;
const USER_ID: usize = 3;
const CREATOR_ID: usize = 4;
const PRODUCT_ID: usize = 5;
const CONTENT_ID: usize = 6;
const SURFACE: usize = 7;
const ORDER_ID: usize = 8;
const CURRENCY: usize = 9;
const ITEMS: usize = 10;

fn event_slot(key: &str) -> Option<usize> {
    Some(match key {
        "type" => TYPE,
        "event_id" => EVENT_ID,
        "ts" => TS,
        "user_id" => USER_ID,
        "creator_id" => CREATOR_ID,
        "product_id" => PRODUCT_ID,
        "content_id" => CONTENT_ID,
        "surface" => SURFACE,
        "order_id" => ORDER_ID,
        "currency" => CURRENCY,
        "items" => ITEMS,
        _ => return None,
    })
}

// Slots of an item's fields.
const ITEM_PRODUCT_ID: usize = 0;
const QUANTITY: usize = 1;
const UNIT_PRICE: usize = 2;
const CATEGORY: usize = 3;

fn item_slot(key: &str) -> Option<usize> {
    Some(match key {
        "product_id" => ITEM_PRODUCT_ID,
        "quantity" => QUANTITY,
        "unit_price" => UNIT_PRICE,
        "category" => CATEGORY,
        _ => return None,
    })
}

/// The fields attrib reads from `obj`, picked out in one pass over its entries (cheaper
/// than a lookup per field). A field given twice is invalid: JSON parsers disagree on
/// which copy wins (simd-json keeps the first, serde_json and JavaScript the last), and a
/// payout must not depend on that. Repeated unknown fields are ignored like any unknown
/// field. `item`: `obj` is `items[item]`, not the event.
fn pick<'a, 'v, const N: usize>(
    obj: Obj<'a, 'v>,
    slot_of: fn(&str) -> Option<usize>,
    item: Option<usize>,
) -> Result<[Slot<'a, 'v>; N], DecodeError> {
    let mut slots = [None; N];
    for (key, value) in obj.iter() {
        let Some(slot) = slot_of(key) else { continue };
        if slots[slot].replace(value).is_some() {
            return Err(DecodeError::event(match item {
                Some(i) => format!("field `items[{i}].{key}`: given more than once"),
                None => format!("field `{key}`: given more than once"),
            }));
        }
    }
    Ok(slots)
}

fn check_item_count(n: usize, limits: &DecodeLimits) -> Result<(), DecodeError> {
    if n > limits.max_items {
        return Err(DecodeError::event(format!(
            "field `items`: {n} items, over the limit of {} (limits.max_items_per_purchase)",
            limits.max_items
        )));
    }
    Ok(())
}

fn item_fields<'a, 'v>(i: usize, v: &'a BorrowedValue<'v>) -> Result<[Slot<'a, 'v>; 4], DecodeError> {
    let obj = v.as_object().ok_or_else(|| DecodeError::event(format!("field `items[{i}]`: must be an object")))?;
    pick(obj, item_slot, Some(i))
}

fn purchase_item(i: usize, v: &BorrowedValue<'_>, max_id: usize) -> Result<Item, DecodeError> {
    let f = item_fields(i, v)?;
    let product_id = req_id(f[ITEM_PRODUCT_ID], Field::Item(i, "product_id"), max_id)?;
    let quantity = int_field(f[QUANTITY], Field::Item(i, "quantity"))?;
    if quantity < 1 {
        return Err(DecodeError::event(format!("field `items[{i}].quantity`: must be >= 1, got {quantity}")));
    }
    let unit_price = int_field(f[UNIT_PRICE], Field::Item(i, "unit_price"))?;
    if unit_price < 0 {
        return Err(DecodeError::event(format!("field `items[{i}].unit_price`: must be >= 0, got {unit_price}")));
    }
    if quantity.checked_mul(unit_price).is_none() {
        return Err(DecodeError::event(format!(
            "field `items[{i}]`: quantity {quantity} * unit_price {unit_price} overflows a 64-bit integer"
        )));
    }
    let category = opt_id(f[CATEGORY], Field::Item(i, "category"), max_id)?;
    Ok(Item { product_id, quantity, unit_price, category })
}

fn refund_item(i: usize, v: &BorrowedValue<'_>, max_id: usize) -> Result<RefundItem, DecodeError> {
    let f = item_fields(i, v)?;
    let product_id = req_id(f[ITEM_PRODUCT_ID], Field::Item(i, "product_id"), max_id)?;
    let quantity = int_field(f[QUANTITY], Field::Item(i, "quantity"))?;
    if quantity < 1 {
        return Err(DecodeError::event(format!("field `items[{i}].quantity`: must be >= 1, got {quantity}")));
    }
    Ok(RefundItem { product_id, quantity })
}

fn req_str<'a>(v: Slot<'a, '_>, key: &str) -> Result<&'a str, DecodeError> {
    match v {
        None => Err(DecodeError::event(format!("missing field `{key}`"))),
        Some(v) => v.as_str().ok_or_else(|| DecodeError::event(format!("field `{key}`: must be a string"))),
    }
}

fn req_array<'a, 'v>(v: Slot<'a, 'v>, key: &str) -> Result<&'a Vec<BorrowedValue<'v>>, DecodeError> {
    match v {
        None => Err(DecodeError::event(format!("missing field `{key}`"))),
        Some(v) => v.as_array().ok_or_else(|| DecodeError::event(format!("field `{key}`: must be an array"))),
    }
}

fn req_id(v: Slot<'_, '_>, field: Field, max_id: usize) -> Result<Str, DecodeError> {
    match v {
        None => Err(DecodeError::event(format!("missing field `{field}`"))),
        Some(v) if v.is_null() => Err(DecodeError::event(format!("missing field `{field}`"))),
        Some(v) => id_value(v, field, max_id),
    }
}

/// Absent and `null` both mean "not given".
fn opt_id(v: Slot<'_, '_>, field: Field, max_id: usize) -> Result<Option<Str>, DecodeError> {
    match v {
        None => Ok(None),
        Some(v) if v.is_null() => Ok(None),
        Some(v) => id_value(v, field, max_id).map(Some),
    }
}

/// A string of 1 to `max_id` bytes (`limits.max_id_bytes`).
fn id_value(v: &BorrowedValue<'_>, field: Field, max_id: usize) -> Result<Str, DecodeError> {
    let s = v.as_str().ok_or_else(|| DecodeError::event(format!("field `{field}`: must be a string")))?;
    if s.is_empty() || s.len() > max_id {
        return Err(DecodeError::event(format!(
            "field `{field}`: must be 1 to {max_id} bytes (limits.max_id_bytes), got {} bytes",
            s.len()
        )));
    }
    Ok(Str::from(s))
}

fn int_field(v: Slot<'_, '_>, field: Field) -> Result<i64, DecodeError> {
    let v = v.ok_or_else(|| DecodeError::event(format!("missing field `{field}`")))?;
    v.as_i64().ok_or_else(|| {
        let what = if v.is_f64() {
            "a number with a fraction or exponent"
        } else if v.is_u64() {
            "beyond the 64-bit integer range"
        } else {
            "not an integer"
        };
        DecodeError::event(format!("field `{field}`: must be an integer, got {what}"))
    })
}

fn req_ts(v: Slot<'_, '_>) -> Result<Millis, DecodeError> {
    let v = v.ok_or_else(|| DecodeError::event("missing field `ts`"))?;
    let ts = if let Some(s) = v.as_str() {
        parse_rfc3339_ms(s)
            .ok_or_else(|| DecodeError::event(format!("field `ts`: {:?} is not an RFC 3339 timestamp", truncate(s))))?
    } else {
        int_field(Some(v), Field::Top("ts"))?
    };
    if !(0..=MAX_TS).contains(&ts) {
        return Err(DecodeError::event(format!("field `ts`: {ts} is outside 1970-01-01 .. 9999-12-31")));
    }
    Ok(ts)
}

/// The parser's error as a dead letter. simd-json refuses numbers it cannot hold (integers
/// beyond the 64-bit range, floats beyond f64) as `InvalidNumber` although they are valid
/// JSON: those are out-of-range values (`invalid_event`) like any other integer beyond
/// i64, and the message names the number and, when it is a field's value, the field.
/// Past the depth limit it is the same dead letter as the pre-scan's. Runs only on the
/// error path.
fn parse_error(raw: &[u8], e: &simd_json::Error, max_depth: usize) -> DecodeError {
    if matches!(e.error(), simd_json::ErrorType::DepthLimitExceeded) {
        return too_deep(max_depth);
    }
    if matches!(e.error(), simd_json::ErrorType::InvalidNumber) {
        if let Some((key, number)) = out_of_range_number(raw, e.index()) {
            let number = String::from_utf8_lossy(&number[..number.len().min(64)]);
            return DecodeError::event(match key {
                Some(key) => format!("field `{key}`: {number} is beyond the 64-bit number range"),
                None => format!("number {number} is beyond the 64-bit number range"),
            });
        }
    }
    DecodeError { reason: DeadLetterReason::InvalidJson, message: format!("invalid JSON: {e}") }
}

/// The well-formed JSON number around byte `at`, and the key it is the value of if it
/// follows `"key":` directly (keys with escapes are not named).
fn out_of_range_number(raw: &[u8], at: usize) -> Option<(Option<&str>, &[u8])> {
    let in_number = |b: u8| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E');
    let at = at.min(raw.len());
    let start = raw[..at].iter().rposition(|&b| !in_number(b)).map_or(0, |p| p + 1);
    let end = raw[at..].iter().position(|&b| !in_number(b)).map_or(raw.len(), |p| at + p);
    let number = &raw[start..end];
    let before = raw[..start].trim_ascii_end();
    let after = raw[end..].trim_ascii_start();
    // A whole value: between structural characters, not glued to other text (`0x10`).
    let delimited = matches!(before.last(), None | Some(b':' | b'[' | b','))
        && matches!(after.first(), None | Some(b',' | b']' | b'}'));
    if !delimited || !is_json_number(number) {
        return None;
    }
    let key = before.strip_suffix(b":").map(<[u8]>::trim_ascii_end).and_then(|b| b.strip_suffix(b"\"")).and_then(|b| {
        let open = b.iter().rposition(|&c| c == b'"')?;
        std::str::from_utf8(&b[open + 1..]).ok().filter(|k| !k.contains('\\') && k.len() <= 64)
    });
    Some((key, number))
}

/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?` (RFC 8259).
fn is_json_number(s: &[u8]) -> bool {
    fn digits(s: &[u8]) -> (usize, &[u8]) {
        let n = s.iter().take_while(|b| b.is_ascii_digit()).count();
        (n, &s[n..])
    }
    let s = s.strip_prefix(b"-").unwrap_or(s);
    let (n, mut rest) = digits(s);
    if n == 0 || (n > 1 && s[0] == b'0') {
        return false;
    }
    if let Some(r) = rest.strip_prefix(b".") {
        let (n, r) = digits(r);
        if n == 0 {
            return false;
        }
        rest = r;
    }
    if let Some(r) = rest.strip_prefix(b"e").or_else(|| rest.strip_prefix(b"E")) {
        let r = r.strip_prefix(b"+").or_else(|| r.strip_prefix(b"-")).unwrap_or(r);
        let (n, r) = digits(r);
        if n == 0 {
            return false;
        }
        rest = r;
    }
    rest.is_empty()
}

/// RFC 3339 to epoch milliseconds; sub-millisecond digits are cut (floor).
pub fn parse_rfc3339_ms(s: &str) -> Option<Millis> {
    chrono::DateTime::parse_from_rfc3339(s).ok().map(|t| t.timestamp_millis())
}

fn truncate(s: &str) -> &str {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Result<Event, DecodeError> {
        Decoder::new(DecodeLimits::default()).decode(s.as_bytes())
    }

    fn err(s: &str) -> (DeadLetterReason, String) {
        let e = dec(s).unwrap_err();
        (e.reason, e.message)
    }

    #[test]
    fn decodes_the_spec_examples() {
        let click = dec(r#"{"type":"click","event_id":"k-1","ts":1764400000000,"user_id":"u-42","creator_id":"c-7","product_id":"p-3","surface":"video"}"#).unwrap();
        assert_eq!(
            click,
            Event::Touch(Touch {
                kind: TouchKind::Click,
                event_id: "k-1".into(),
                ts: 1764400000000,
                user_id: "u-42".into(),
                creator_id: "c-7".into(),
                product_id: Some("p-3".into()),
                surface: Some("video".into()),
            })
        );
        let p = dec(r#"{"type":"purchase","event_id":"o-1","ts":1764400600000,"user_id":"u-42","order_id":"ord-9","currency":"USD","items":[{"product_id":"p-3","quantity":2,"unit_price":1999,"category":"beauty"}]}"#).unwrap();
        let Event::Purchase(p) = p else { panic!("not a purchase") };
        assert_eq!(p.items[0].gross(), 3998);
        assert_eq!(p.currency.as_str(), "USD");
        let r = dec(r#"{"type":"refund","event_id":"r-1","ts":1764487000000,"user_id":"u-42","order_id":"ord-9","items":[{"product_id":"p-3","quantity":1}]}"#).unwrap();
        let Event::Refund(r) = r else { panic!("not a refund") };
        assert_eq!(r.items.unwrap()[0].quantity, 1);
    }

    #[test]
    fn rfc3339_and_integer_ts_agree() {
        let a = dec(r#"{"type":"view","event_id":"v","ts":"2025-11-29T07:06:40Z","user_id":"u","creator_id":"c"}"#)
            .unwrap();
        let b = dec(r#"{"type":"view","event_id":"v","ts":1764400000000,"user_id":"u","creator_id":"c"}"#).unwrap();
        assert_eq!(a.ts(), b.ts());
        let c = dec(
            r#"{"type":"view","event_id":"v","ts":"2025-11-29T08:06:40.123456+01:00","user_id":"u","creator_id":"c"}"#,
        )
        .unwrap();
        assert_eq!(c.ts(), 1764400000123);
    }

    #[test]
    fn unknown_fields_are_ignored_and_null_optionals_are_absent() {
        let e = dec(
            r#"{"type":"view","event_id":"v","ts":1,"user_id":"u","creator_id":"c","product_id":null,"x":{"y":[1,2]}}"#,
        )
        .unwrap();
        let Event::Touch(t) = e else { panic!() };
        assert_eq!(t.product_id, None);
    }

    #[test]
    fn rejects_each_broken_rule_with_the_field_named() {
        let cases: &[(&str, DeadLetterReason, &str)] = &[
            ("{not json", DeadLetterReason::InvalidJson, "invalid JSON"),
            ("[1,2]", DeadLetterReason::InvalidEvent, "JSON object"),
            (r#"{"type":"like","event_id":"e","ts":1,"user_id":"u"}"#, DeadLetterReason::InvalidEvent, "`type`"),
            (r#"{"type":"view","event_id":"e","ts":1,"creator_id":"c"}"#, DeadLetterReason::InvalidEvent, "`user_id`"),
            (
                r#"{"type":"view","event_id":"e","ts":1.5,"user_id":"u","creator_id":"c"}"#,
                DeadLetterReason::InvalidEvent,
                "`ts`",
            ),
            (
                r#"{"type":"view","event_id":"e","ts":-1,"user_id":"u","creator_id":"c"}"#,
                DeadLetterReason::InvalidEvent,
                "`ts`",
            ),
            (
                r#"{"type":"view","event_id":"e","ts":"yesterday","user_id":"u","creator_id":"c"}"#,
                DeadLetterReason::InvalidEvent,
                "RFC 3339",
            ),
            (
                r#"{"type":"view","event_id":"","ts":1,"user_id":"u","creator_id":"c"}"#,
                DeadLetterReason::InvalidEvent,
                "`event_id`",
            ),
            (r#"{"type":"click","event_id":"e","ts":1,"user_id":"u"}"#, DeadLetterReason::InvalidEvent, "`creator_id`"),
            (
                r#"{"type":"purchase","event_id":"e","ts":1,"user_id":"u","order_id":"o","currency":"USD","items":[]}"#,
                DeadLetterReason::InvalidEvent,
                "`items`",
            ),
            (
                r#"{"type":"purchase","event_id":"e","ts":1,"user_id":"u","order_id":"o","currency":"usd","items":[{"product_id":"p","quantity":1,"unit_price":1}]}"#,
                DeadLetterReason::InvalidEvent,
                "`currency`",
            ),
            (
                r#"{"type":"purchase","event_id":"e","ts":1,"user_id":"u","currency":"USD","items":[{"product_id":"p","quantity":1,"unit_price":1}]}"#,
                DeadLetterReason::InvalidEvent,
                "`order_id`",
            ),
            (
                r#"{"type":"purchase","event_id":"e","ts":1,"user_id":"u","order_id":"o","currency":"USD","items":[{"product_id":"p","quantity":0,"unit_price":1}]}"#,
                DeadLetterReason::InvalidEvent,
                "`items[0].quantity`",
            ),
            (
                r#"{"type":"purchase","event_id":"e","ts":1,"user_id":"u","order_id":"o","currency":"USD","items":[{"product_id":"p","quantity":1,"unit_price":-1}]}"#,
                DeadLetterReason::InvalidEvent,
                "`items[0].unit_price`",
            ),
            (
                r#"{"type":"purchase","event_id":"e","ts":1,"user_id":"u","order_id":"o","currency":"USD","items":[{"product_id":"p","quantity":1,"unit_price":2.5}]}"#,
                DeadLetterReason::InvalidEvent,
                "`items[0].unit_price`",
            ),
            (
                r#"{"type":"purchase","event_id":"e","ts":1,"user_id":"u","order_id":"o","currency":"USD","items":[{"product_id":"p","quantity":3,"unit_price":4611686018427387904}]}"#,
                DeadLetterReason::InvalidEvent,
                "overflows",
            ),
            (
                r#"{"type":"purchase","event_id":"e","ts":1,"user_id":"u","order_id":"o","currency":"USD","items":[{"product_id":"p","quantity":1,"unit_price":18446744073709551615}]}"#,
                DeadLetterReason::InvalidEvent,
                "64-bit",
            ),
            (
                r#"{"type":"refund","event_id":"e","ts":1,"user_id":"u","order_id":"o","items":[]}"#,
                DeadLetterReason::InvalidEvent,
                "`items`",
            ),
        ];
        for (input, reason, needle) in cases {
            let (r, msg) = err(input);
            assert_eq!(r, *reason, "{input}: {msg}");
            assert!(msg.contains(needle), "{input}: message {msg:?} should mention {needle}");
        }
    }

    #[test]
    fn id_length_limit_is_256_bytes() {
        let ok = format!(r#"{{"type":"view","event_id":"{}","ts":1,"user_id":"u","creator_id":"c"}}"#, "e".repeat(256));
        assert!(dec(&ok).is_ok());
        let long =
            format!(r#"{{"type":"view","event_id":"{}","ts":1,"user_id":"u","creator_id":"c"}}"#, "e".repeat(257));
        assert!(err(&long).1.contains("`event_id`"));
    }

    #[test]
    fn id_length_follows_the_configured_limit() {
        let mut d = Decoder::new(DecodeLimits { max_id_bytes: 10, ..DecodeLimits::default() });
        let view = |id: &str| format!(r#"{{"type":"view","event_id":"e","ts":1,"user_id":"u","creator_id":"{id}"}}"#);
        assert!(d.decode(view(&"c".repeat(10)).as_bytes()).is_ok());
        let e = d.decode(view(&"c".repeat(11)).as_bytes()).unwrap_err();
        assert_eq!(e.reason, DeadLetterReason::InvalidEvent);
        assert!(e.message.contains("`creator_id`: must be 1 to 10 bytes"), "{}", e.message);
        // Ids inside items obey it too; bytes, not characters, count.
        let purchase = |pid: &str| {
            format!(
                r#"{{"type":"purchase","event_id":"e","ts":1,"user_id":"u","order_id":"o","currency":"USD","items":[{{"product_id":"{pid}","quantity":1,"unit_price":1}}]}}"#
            )
        };
        assert!(d.decode(purchase("ééééé").as_bytes()).is_ok());
        let e = d.decode(purchase("ééééé1").as_bytes()).unwrap_err();
        assert!(e.message.contains("`items[0].product_id`"), "{}", e.message);
    }

    /// A view whose unknown field `x` nests arrays so that the whole event is `depth` deep.
    fn nested(depth: usize) -> String {
        let inner = depth - 1;
        format!(
            r#"{{"type":"view","event_id":"e","ts":1,"user_id":"u","creator_id":"c","x":{}{}}}"#,
            "[".repeat(inner),
            "]".repeat(inner)
        )
    }

    #[test]
    fn nesting_limit_admits_exactly_max_depth() {
        for max_depth in [1, 2, 5, 32] {
            let mut d = Decoder::new(DecodeLimits { max_depth, ..DecodeLimits::default() });
            if max_depth >= 2 {
                assert!(d.decode(nested(max_depth).as_bytes()).is_ok(), "depth {max_depth}");
            }
            let e = d.decode(nested(max_depth + 1).as_bytes()).unwrap_err();
            assert_eq!(e.reason, DeadLetterReason::InvalidJson);
            assert!(e.message.contains(&format!("nesting deeper than {max_depth} levels")), "{}", e.message);
        }
        // Objects count like arrays.
        let mut d = Decoder::new(DecodeLimits { max_depth: 3, ..DecodeLimits::default() });
        let objects = |n: usize| {
            format!(
                r#"{{"type":"view","event_id":"e","ts":1,"user_id":"u","creator_id":"c","x":{}1{}}}"#,
                r#"{"a":"#.repeat(n),
                "}".repeat(n)
            )
        };
        assert!(d.decode(objects(2).as_bytes()).is_ok());
        assert!(d.decode(objects(3).as_bytes()).unwrap_err().message.contains("nesting deeper than 3"));
    }

    #[test]
    fn brackets_inside_strings_do_not_nest() {
        let mut d = Decoder::new(DecodeLimits { max_depth: 3, ..DecodeLimits::default() });
        let with_pad = |pad: &str| {
            format!(r#"{{"type":"view","event_id":"e","ts":1,"user_id":"u","creator_id":"c","pad":"{pad}","x":[[]]}}"#)
        };
        // Brackets, escaped quotes and escaped backslashes inside a string: depth stays 3.
        for pad in ["[[[[{{{{", r#"\"[[[[{{{{"#, r#"\\[[[[\"{{{{\\"#, r#"[\"[\\\"[{\\\\"#] {
            let r = d.decode(with_pad(pad).as_bytes());
            assert!(r.is_ok(), "{pad}: {r:?}");
        }
        // An escaped backslash ends in a real closing quote: the brackets after it count.
        let e = d
            .decode(br#"{"type":"view","event_id":"e","ts":1,"user_id":"u","creator_id":"c","pad":"\\","x":[[[]]]}"#)
            .unwrap_err();
        assert!(e.message.contains("nesting deeper than 3"), "{}", e.message);
        assert!(!nesting_exceeds(br#"{"a":"\"}[[[[[\""}"#, 1));
        assert!(nesting_exceeds(br#"{"a":"\\"}[[[[[\""}"#, 4));
        // Unbalanced closers do not earn credit; an unterminated string ends the scan.
        assert!(nesting_exceeds(b"]]]]]][[[", 2));
        assert!(!nesting_exceeds(b"]]]]]][[", 2));
        assert!(!nesting_exceeds(br#"["[[[[[[[[\"#, 1));
    }

    #[test]
    fn the_parser_and_the_prescan_agree_on_depth() {
        // Short messages meet simd-json's own depth check, long ones the byte scan first:
        // the same edge and the same dead letter either way, brackets in strings or not.
        let pad = format!(r#"\"[{{\\{}"#, "x".repeat(PRESCAN_BYTES));
        for max_depth in [2, 3, 7, 32] {
            let mut d = Decoder::new(DecodeLimits { max_depth, ..DecodeLimits::default() });
            for padded in [false, true] {
                let event = |depth: usize| {
                    let e = nested(depth);
                    if padded {
                        e.replacen('{', &format!(r#"{{"pad":"{pad}","#), 1)
                    } else {
                        e
                    }
                };
                assert_eq!(event(max_depth).len() > PRESCAN_BYTES, padded);
                let ok = d.decode(event(max_depth).as_bytes());
                assert!(ok.is_ok(), "depth {max_depth}, padded {padded}: {ok:?}");
                let e = d.decode(event(max_depth + 1).as_bytes()).unwrap_err();
                assert_eq!(e, too_deep(max_depth), "padded {padded}");
            }
        }
    }

    #[test]
    fn many_items_are_wide_not_deep() {
        // More opening brackets than the depth limit takes the exact scan; depth is 3.
        let item = r#"{"product_id":"p","quantity":1,"unit_price":1}"#;
        let p = format!(
            r#"{{"type":"purchase","event_id":"e","ts":1,"user_id":"u","order_id":"o","currency":"USD","items":[{}]}}"#,
            vec![item; 40].join(",")
        );
        let mut d = Decoder::new(DecodeLimits { max_depth: 3, ..DecodeLimits::default() });
        assert!(d.decode(p.as_bytes()).is_ok());
        let mut d = Decoder::new(DecodeLimits { max_depth: 2, ..DecodeLimits::default() });
        assert!(d.decode(p.as_bytes()).unwrap_err().message.contains("nesting deeper than 2"));
    }

    #[test]
    fn a_field_given_twice_is_invalid() {
        let twice = [
            (r#"{"type":"view","type":"click","event_id":"e","ts":1,"user_id":"u","creator_id":"c"}"#, "`type`"),
            (
                r#"{"type":"view","event_id":"e","ts":1,"user_id":"u","creator_id":"c","product_id":null,"product_id":"p"}"#,
                "`product_id`",
            ),
            (
                r#"{"type":"purchase","event_id":"e","ts":1,"user_id":"u","order_id":"o","currency":"USD","items":[{"product_id":"p","quantity":1,"unit_price":1000,"unit_price":5}]}"#,
                "`items[0].unit_price`",
            ),
            (
                r#"{"type":"refund","event_id":"e","ts":1,"user_id":"u","order_id":"o","items":[{"product_id":"p","quantity":1,"quantity":1}]}"#,
                "`items[0].quantity`",
            ),
        ];
        for (input, field) in twice {
            let (reason, message) = err(input);
            assert_eq!(reason, DeadLetterReason::InvalidEvent, "{input}");
            assert_eq!(message, format!("field {field}: given more than once"));
        }
        // Unknown fields are ignored, repeated or not.
        assert!(dec(r#"{"type":"view","event_id":"e","ts":1,"user_id":"u","creator_id":"c","x":1,"x":[2]}"#).is_ok());
    }

    #[test]
    fn numbers_beyond_64_bits_are_out_of_range_values_not_bad_json() {
        let view = |ts: &str| format!(r#"{{"type":"view","event_id":"e","ts":{ts},"user_id":"u","creator_id":"c"}}"#);
        for ts in ["99999999999999999999999", "-9223372036854775809", "1e400", "-2.5E+999"] {
            let (reason, message) = err(&view(ts));
            assert_eq!(reason, DeadLetterReason::InvalidEvent, "{ts}: {message}");
            assert_eq!(message, format!("field `ts`: {ts} is beyond the 64-bit number range"));
        }
        let (reason, message) = err(&view("18446744073709551615"));
        assert_eq!(
            (reason, message.as_str()),
            (DeadLetterReason::InvalidEvent, "field `ts`: must be an integer, got beyond the 64-bit integer range")
        );
        let (reason, message) = err(r#"{"type":"view", "x" : [ 1e999 ]}"#);
        assert_eq!(
            (reason, message.as_str()),
            (DeadLetterReason::InvalidEvent, "number 1e999 is beyond the 64-bit number range")
        );
        let (reason, message) = err(r#"{"type":"view", "x" :  1e999 }"#);
        assert_eq!(
            (reason, message.as_str()),
            (DeadLetterReason::InvalidEvent, "field `x`: 1e999 is beyond the 64-bit number range")
        );
        // Malformed numbers stay bad JSON.
        for ts in ["01", "1.", "-", ".5", "1e", "+1", "0x10", "1.5.5", "NaN", "Infinity"] {
            assert_eq!(err(&view(ts)).0, DeadLetterReason::InvalidJson, "{ts}");
        }
    }

    #[test]
    fn json_number_grammar() {
        for ok in ["0", "-0", "12", "1.5", "-1.25e10", "1E+2", "1e-7", "0.0"] {
            assert!(is_json_number(ok.as_bytes()), "{ok}");
        }
        for bad in ["", "-", "01", "1.", ".1", "1e", "1e+", "+1", "--1", "1.2.3", "1ee2", "1-2"] {
            assert!(!is_json_number(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn invalid_utf8_and_oversize_are_dead_letters_not_panics() {
        let mut d = Decoder::new(DecodeLimits { max_message_bytes: 64, max_items: 10, ..DecodeLimits::default() });
        assert_eq!(d.decode(b"{\"type\":\"view\xff\"}").unwrap_err().reason, DeadLetterReason::InvalidJson);
        assert_eq!(d.decode(&[b' '; 65]).unwrap_err().reason, DeadLetterReason::TooLarge);
        assert_eq!(d.decode(b"").unwrap_err().reason, DeadLetterReason::InvalidJson);
    }
}
