//! Arbitrary bytes into [`Decoder::decode`]: it never panics; what it accepts obeys every
//! rule of SPEC §1 and survives a re-encode unchanged; tighter limits never accept more;
//! the nesting pre-check agrees with a real parser.

#![no_main]

use std::cell::RefCell;

use attrib::codec::{DecodeLimits, Decoder, MAX_TS};
use attrib::model::{DeadLetterReason, Event};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

const TIGHT: DecodeLimits = DecodeLimits { max_message_bytes: 2048, max_items: 3, max_id_bytes: 8, max_depth: 4 };

thread_local! {
    static DECODERS: RefCell<(Decoder, Decoder)> =
        RefCell::new((Decoder::new(DecodeLimits::default()), Decoder::new(TIGHT)));
}

fuzz_target!(|data: &[u8]| {
    DECODERS.with(|d| {
        let (loose, tight) = &mut *d.borrow_mut();
        let wide = loose.decode(data);
        let narrow = tight.decode(data);
        // The single-pass fast path and simd-json agree on everything, errors included.
        assert_eq!(wide, loose.decode_reference(data), "fast path and simd-json differ");
        assert_eq!(narrow, tight.decode_reference(data), "fast path and simd-json differ (tight limits)");
        match &wide {
            Ok(event) => {
                check_rules(event, &DecodeLimits::default());
                let again = loose.decode(&serde_json::to_vec(&encode(event)).unwrap());
                assert_eq!(again.as_ref(), Ok(event), "re-encoded event decodes differently");
                // simd-json is no more lenient than serde_json about what JSON is.
                assert!(serde_json::from_slice::<Value>(data).is_ok(), "accepted what serde_json rejects");
            }
            Err(e) => {
                assert!(!e.message.is_empty());
                assert!(
                    matches!(
                        e.reason,
                        DeadLetterReason::InvalidJson | DeadLetterReason::InvalidEvent | DeadLetterReason::TooLarge
                    ),
                    "{e:?}"
                );
            }
        }
        match &narrow {
            Ok(event) => {
                check_rules(event, &TIGHT);
                assert_eq!(wide.as_ref(), Ok(event), "tighter limits accepted what the defaults reject");
            }
            Err(e) => assert!(!e.message.is_empty()),
        }
        // The nesting pre-check against serde_json (recursion limit 128 > both limits).
        if let Ok(v) = serde_json::from_slice::<Value>(data) {
            let depth = depth(&v);
            for (result, limits) in [(&wide, DecodeLimits::default()), (&narrow, TIGHT)] {
                if data.len() > limits.max_message_bytes {
                    continue;
                }
                let nesting = matches!(result, Err(e) if e.reason == DeadLetterReason::InvalidJson
                    && e.message.starts_with("invalid JSON: nesting deeper than"));
                assert_eq!(nesting, depth > limits.max_depth, "depth {depth}, limit {}: {result:?}", limits.max_depth);
            }
        }
    });
});

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn check_rules(event: &Event, limits: &DecodeLimits) {
    let id = |s: &str| assert!(!s.is_empty() && s.len() <= limits.max_id_bytes, "id {s:?}");
    id(event.event_id());
    id(event.user_id());
    assert!((0..=MAX_TS).contains(&event.ts()));
    match event {
        Event::Touch(t) => {
            id(&t.creator_id);
            for s in [&t.product_id, &t.surface].into_iter().flatten() {
                id(s);
            }
        }
        Event::Purchase(p) => {
            id(&p.order_id);
            assert!(!p.items.is_empty() && p.items.len() <= limits.max_items);
            for item in &p.items {
                id(&item.product_id);
                if let Some(c) = &item.category {
                    id(c);
                }
                assert!(item.quantity >= 1 && item.unit_price >= 0);
                assert!(item.quantity.checked_mul(item.unit_price).is_some());
            }
        }
        Event::Refund(r) => {
            id(&r.order_id);
            if let Some(items) = &r.items {
                assert!(!items.is_empty() && items.len() <= limits.max_items);
                for item in items {
                    id(&item.product_id);
                    assert!(item.quantity >= 1);
                }
            }
        }
    }
}

/// The event back in the input format of SPEC §1.
fn encode(event: &Event) -> Value {
    match event {
        Event::Touch(t) => json!({
            "type": t.kind.as_str(), "event_id": t.event_id, "ts": t.ts, "user_id": t.user_id,
            "creator_id": t.creator_id, "product_id": t.product_id, "surface": t.surface,
        }),
        Event::Purchase(p) => json!({
            "type": "purchase", "event_id": p.event_id, "ts": p.ts, "user_id": p.user_id,
            "order_id": p.order_id, "currency": p.currency.as_str(),
            "items": p.items.iter().map(|i| json!({
                "product_id": i.product_id, "quantity": i.quantity, "unit_price": i.unit_price,
                "category": i.category,
            })).collect::<Vec<_>>(),
        }),
        Event::Refund(r) => json!({
            "type": "refund", "event_id": r.event_id, "ts": r.ts, "user_id": r.user_id,
            "order_id": r.order_id,
            "items": r.items.as_ref().map(|items| items.iter().map(|i| json!({
                "product_id": i.product_id, "quantity": i.quantity,
            })).collect::<Vec<_>>()),
        }),
    }
}
