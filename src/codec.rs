//! Bytes to events: simd-json parsing plus every validation rule of SPEC §1.
//!
//! [`Decoder::decode`] never panics on input; anything that breaks a rule comes back as a
//! [`DecodeError`] whose `reason` is the dead-letter reason and whose message names the
//! field. Records go the other way through [`encode_record`].

use simd_json::prelude::*;
use simd_json::BorrowedValue;

use crate::model::{
    Currency, DeadLetterReason, Event, Item, Millis, Purchase, Record, Refund, RefundItem, Str, Touch, TouchKind,
};

/// Longest id, in bytes (SPEC §1).
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Longest accepted message, in bytes.
    pub max_message_bytes: usize,
    /// Most items a purchase (or refund) may carry.
    pub max_items: usize,
    /// Longest id, in bytes.
    pub max_id_bytes: usize,
    /// Deepest nesting of objects and arrays.
    pub max_depth: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits { max_message_bytes: 1024 * 1024, max_items: 1000, max_id_bytes: 256, max_depth: 32 }
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
        Decoder { limits, scratch: Vec::new(), buffers: simd_json::Buffers::default() }
    }

    /// Decodes and validates one message (a Kafka value or a JSONL line without its newline).
    pub fn decode(&mut self, raw: &[u8]) -> Result<Event, DecodeError> {
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
        // simd-json parses in place; the caller keeps the original bytes for dead letters.
        self.scratch.clear();
        self.scratch.extend_from_slice(raw);
        let value = simd_json::to_borrowed_value_with_buffers(&mut self.scratch, &mut self.buffers).map_err(|e| {
            DecodeError { reason: DeadLetterReason::InvalidJson, message: format!("invalid JSON: {e}") }
        })?;
        let obj = value.as_object().ok_or_else(|| DecodeError::event("event must be a JSON object"))?;
        event_from_object(obj, &self.limits)
    }
}

fn event_from_object(obj: Obj<'_, '_>, limits: &DecodeLimits) -> Result<Event, DecodeError> {
    let ty = req_str(obj, "type")?;
    let event_id = req_id(obj, "event_id")?;
    let ts = req_ts(obj)?;
    let user_id = req_id(obj, "user_id")?;
    match ty {
        "view" | "click" => {
            let kind = if ty == "view" { TouchKind::View } else { TouchKind::Click };
            let creator_id = req_id(obj, "creator_id")?;
            let product_id = opt_id(obj, "product_id")?;
            opt_id(obj, "content_id")?; // validated, not used by attribution
            let surface = opt_id(obj, "surface")?;
            Ok(Event::Touch(Touch { kind, event_id, ts, user_id, creator_id, product_id, surface }))
        }
        "purchase" => {
            let order_id = req_id(obj, "order_id")?;
            let currency_text = req_str(obj, "currency")?;
            let currency = Currency::parse(currency_text).ok_or_else(|| {
                DecodeError::event(format!(
                    "field `currency`: {currency_text:?} is not three upper-case letters (ISO 4217)"
                ))
            })?;
            let raw_items = req_array(obj, "items")?;
            if raw_items.is_empty() {
                return Err(DecodeError::event("field `items`: a purchase needs at least one item"));
            }
            check_item_count(raw_items.len(), limits)?;
            let mut items = Vec::with_capacity(raw_items.len());
            for (i, v) in raw_items.iter().enumerate() {
                items.push(purchase_item(i, v)?);
            }
            Ok(Event::Purchase(Purchase { event_id, ts, user_id, order_id, currency, items }))
        }
        "refund" => {
            let order_id = req_id(obj, "order_id")?;
            let items = match obj.get("items") {
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
                        items.push(refund_item(i, v)?);
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

fn check_item_count(n: usize, limits: &DecodeLimits) -> Result<(), DecodeError> {
    if n > limits.max_items {
        return Err(DecodeError::event(format!("field `items`: {n} items, over the limit of {}", limits.max_items)));
    }
    Ok(())
}

fn purchase_item(i: usize, v: &BorrowedValue<'_>) -> Result<Item, DecodeError> {
    let obj = v.as_object().ok_or_else(|| DecodeError::event(format!("field `items[{i}]`: must be an object")))?;
    let product_id = req_id_at(obj, "product_id", &format!("items[{i}].product_id"))?;
    let quantity = int_field(obj, "quantity", &format!("items[{i}].quantity"))?;
    if quantity < 1 {
        return Err(DecodeError::event(format!("field `items[{i}].quantity`: must be >= 1, got {quantity}")));
    }
    let unit_price = int_field(obj, "unit_price", &format!("items[{i}].unit_price"))?;
    if unit_price < 0 {
        return Err(DecodeError::event(format!("field `items[{i}].unit_price`: must be >= 0, got {unit_price}")));
    }
    if quantity.checked_mul(unit_price).is_none() {
        return Err(DecodeError::event(format!(
            "field `items[{i}]`: quantity {quantity} * unit_price {unit_price} overflows a 64-bit integer"
        )));
    }
    let category = opt_id_at(obj, "category", &format!("items[{i}].category"))?;
    Ok(Item { product_id, quantity, unit_price, category })
}

fn refund_item(i: usize, v: &BorrowedValue<'_>) -> Result<RefundItem, DecodeError> {
    let obj = v.as_object().ok_or_else(|| DecodeError::event(format!("field `items[{i}]`: must be an object")))?;
    let product_id = req_id_at(obj, "product_id", &format!("items[{i}].product_id"))?;
    let quantity = int_field(obj, "quantity", &format!("items[{i}].quantity"))?;
    if quantity < 1 {
        return Err(DecodeError::event(format!("field `items[{i}].quantity`: must be >= 1, got {quantity}")));
    }
    Ok(RefundItem { product_id, quantity })
}

fn req_str<'a>(obj: Obj<'a, '_>, key: &str) -> Result<&'a str, DecodeError> {
    match obj.get(key) {
        None => Err(DecodeError::event(format!("missing field `{key}`"))),
        Some(v) => v.as_str().ok_or_else(|| DecodeError::event(format!("field `{key}`: must be a string"))),
    }
}

fn req_array<'a, 'v>(obj: Obj<'a, 'v>, key: &str) -> Result<&'a Vec<BorrowedValue<'v>>, DecodeError> {
    match obj.get(key) {
        None => Err(DecodeError::event(format!("missing field `{key}`"))),
        Some(v) => v.as_array().ok_or_else(|| DecodeError::event(format!("field `{key}`: must be an array"))),
    }
}

fn req_id(obj: Obj<'_, '_>, key: &str) -> Result<Str, DecodeError> {
    req_id_at(obj, key, key)
}

fn req_id_at(obj: Obj<'_, '_>, key: &str, path: &str) -> Result<Str, DecodeError> {
    match obj.get(key) {
        None => Err(DecodeError::event(format!("missing field `{path}`"))),
        Some(v) if v.is_null() => Err(DecodeError::event(format!("missing field `{path}`"))),
        Some(v) => id_value(v, path),
    }
}

fn opt_id(obj: Obj<'_, '_>, key: &str) -> Result<Option<Str>, DecodeError> {
    opt_id_at(obj, key, key)
}

/// Absent and `null` both mean "not given".
fn opt_id_at(obj: Obj<'_, '_>, key: &str, path: &str) -> Result<Option<Str>, DecodeError> {
    match obj.get(key) {
        None => Ok(None),
        Some(v) if v.is_null() => Ok(None),
        Some(v) => id_value(v, path).map(Some),
    }
}

fn id_value(v: &BorrowedValue<'_>, path: &str) -> Result<Str, DecodeError> {
    let s = v.as_str().ok_or_else(|| DecodeError::event(format!("field `{path}`: must be a string")))?;
    if s.is_empty() || s.len() > MAX_ID_BYTES {
        return Err(DecodeError::event(format!(
            "field `{path}`: must be 1 to {MAX_ID_BYTES} bytes, got {} bytes",
            s.len()
        )));
    }
    Ok(Str::from(s))
}

fn int_field(obj: Obj<'_, '_>, key: &str, path: &str) -> Result<i64, DecodeError> {
    let v = obj.get(key).ok_or_else(|| DecodeError::event(format!("missing field `{path}`")))?;
    v.as_i64().ok_or_else(|| {
        let what = if v.is_f64() {
            "a number with a fraction or exponent"
        } else if v.is_u64() {
            "beyond the 64-bit integer range"
        } else {
            "not an integer"
        };
        DecodeError::event(format!("field `{path}`: must be an integer, got {what}"))
    })
}

fn req_ts(obj: Obj<'_, '_>) -> Result<Millis, DecodeError> {
    let v = obj.get("ts").ok_or_else(|| DecodeError::event("missing field `ts`"))?;
    let ts = if let Some(s) = v.as_str() {
        parse_rfc3339_ms(s)
            .ok_or_else(|| DecodeError::event(format!("field `ts`: {:?} is not an RFC 3339 timestamp", truncate(s))))?
    } else {
        int_field(obj, "ts", "ts")?
    };
    if !(0..=MAX_TS).contains(&ts) {
        return Err(DecodeError::event(format!("field `ts`: {ts} is outside 1970-01-01 .. 9999-12-31")));
    }
    Ok(ts)
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

/// Appends one record as a JSON line (with `\n`) to `out`.
pub fn encode_record(record: &Record, out: &mut Vec<u8>) {
    // Serialising plain structs into a Vec cannot fail.
    serde_json::to_writer(&mut *out, record).expect("record serialises");
    out.push(b'\n');
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
    fn invalid_utf8_and_oversize_are_dead_letters_not_panics() {
        let mut d = Decoder::new(DecodeLimits { max_message_bytes: 64, max_items: 10, ..DecodeLimits::default() });
        assert_eq!(d.decode(b"{\"type\":\"view\xff\"}").unwrap_err().reason, DeadLetterReason::InvalidJson);
        assert_eq!(d.decode(&[b' '; 65]).unwrap_err().reason, DeadLetterReason::TooLarge);
        assert_eq!(d.decode(b"").unwrap_err().reason, DeadLetterReason::InvalidJson);
    }
}
