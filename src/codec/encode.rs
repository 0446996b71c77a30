//! Records to JSON lines, written straight from the borrowed [`RecordView`].
//!
//! The bytes are exactly what `serde_json` writes for the owned [`Record`] (field order,
//! optional fields left out, string escapes): [`encode_owned`] is that reference and the
//! tests compare the two. Plain strings (no `"`, `\` or control characters: every id the
//! generator writes) are copied as they are; the rare string that needs escapes goes
//! through `serde_json` itself, so the escapes cannot differ.

use crate::model::{Record, RecordKind, RecordView};

/// Appends one record as a JSON line (with `\n`) to `out`.
pub fn encode_record(r: &RecordView<'_>, out: &mut Vec<u8>) {
    write(r, None, out);
}

/// [`encode_record`] for a stream of records, reusing what the previous record wrote for
/// its purchase item when the item is the same: consecutive shadow records of one item
/// (every shadow model's, every credited creator) share it. The bytes are the same. A
/// stream with one record per item (the paid records of `last_touch`) pays for the
/// comparison and gains nothing, so replay uses it for shadow records only.
#[derive(Debug, Default)]
pub struct Encoder {
    /// The item fields of the last record, compared in full (`None` before the first).
    key: Option<ItemKey>,
    item: Item,
}

#[derive(Debug, Default)]
struct ItemKey {
    order_id: String,
    purchase_event_id: String,
    item_index: u32,
    product_id: String,
    quantity: i64,
    user_id: String,
    purchase_ts: i64,
    gross_minor: i64,
}

/// The encoded pieces of one item's records.
#[derive(Debug, Default)]
struct Item {
    /// [`id_prefix`].
    id_prefix: Vec<u8>,
    /// [`item_fields`].
    fields: Vec<u8>,
    /// [`purchase_fields`].
    purchase: Vec<u8>,
}

impl Encoder {
    /// Appends one record as a JSON line (with `\n`) to `out`.
    pub fn encode(&mut self, r: &RecordView<'_>, out: &mut Vec<u8>) {
        if !self.key.as_ref().is_some_and(|k| k.is(r)) {
            self.key.get_or_insert_default().set(r);
            let item = &mut self.item;
            for piece in [&mut item.id_prefix, &mut item.fields, &mut item.purchase] {
                piece.clear();
            }
            id_prefix(r, &mut item.id_prefix);
            item_fields(r, &mut item.fields);
            purchase_fields(r, &mut item.purchase);
        }
        write(r, Some(&self.item), out);
    }
}

impl ItemKey {
    /// Whether `r` is of this item (ints first: they differ most cheaply).
    fn is(&self, r: &RecordView<'_>) -> bool {
        self.item_index == r.item_index
            && self.quantity == r.quantity
            && self.purchase_ts == r.purchase_ts
            && self.gross_minor == r.gross_minor
            && self.purchase_event_id == r.purchase_event_id
            && self.order_id == r.order_id
            && self.product_id == r.product_id
            && self.user_id == r.user_id
    }

    /// Becomes `r`'s item (reusing the strings' buffers).
    fn set(&mut self, r: &RecordView<'_>) {
        for (kept, s) in [
            (&mut self.order_id, r.order_id),
            (&mut self.purchase_event_id, r.purchase_event_id),
            (&mut self.product_id, r.product_id),
            (&mut self.user_id, r.user_id),
        ] {
            kept.clear();
            kept.push_str(s);
        }
        (self.item_index, self.quantity, self.purchase_ts, self.gross_minor) =
            (r.item_index, r.quantity, r.purchase_ts, r.gross_minor);
    }
}

/// One record; the item's pieces from `item` when given (they are `r`'s), else from `r`.
fn write(r: &RecordView<'_>, item: Option<&Item>, out: &mut Vec<u8>) {
    out.reserve(640);
    out.extend_from_slice(b"{\"commission_id\":\"");
    match r.kind {
        RecordKind::Commission => base_id(r, item, out),
        RecordKind::Reversal => {
            esc(r.refund_event_id.unwrap_or_default(), out);
            out.push(b':');
            int(r.item_index, out);
            out.push(b':');
            esc(r.creator_id, out);
        }
        RecordKind::Lock => {
            base_id(r, item, out);
            out.extend_from_slice(b":lock");
        }
        RecordKind::Adjustment => {
            base_id(r, item, out);
            out.extend_from_slice(b":adj:");
            esc(r.revision.unwrap_or_default(), out);
        }
    }
    out.extend_from_slice(b"\",\"kind\":\"");
    out.extend_from_slice(r.kind.as_str().as_bytes());
    out.push(b'"');
    match item {
        Some(item) => out.extend_from_slice(&item.fields),
        None => item_fields(r, out),
    }
    out.extend_from_slice(b",\"creator_id\":");
    string(r.creator_id, out);
    out.extend_from_slice(b",\"model\":\"");
    out.extend_from_slice(r.model.as_str().as_bytes());
    out.extend_from_slice(b"\",\"weight\":");
    int(r.weight, out);
    out.extend_from_slice(b",\"total_weight\":");
    int(r.total_weight, out);
    out.extend_from_slice(b",\"touch_event_id\":");
    string(r.touch_event_id, out);
    out.extend_from_slice(b",\"touch_type\":\"");
    out.extend_from_slice(r.touch_type.as_str().as_bytes());
    out.extend_from_slice(b"\",\"touch_ts\":");
    int(r.touch_ts, out);
    out.extend_from_slice(b",\"touch_count\":");
    int(r.touch_count, out);
    match item {
        Some(item) => out.extend_from_slice(&item.purchase),
        None => purchase_fields(r, out),
    }
    out.extend_from_slice(b",\"share_minor\":");
    int(r.share_minor, out);
    out.extend_from_slice(b",\"rate_bps\":");
    int(r.rate_bps, out);
    out.extend_from_slice(b",\"rule_id\":");
    string(r.rule_id, out);
    out.extend_from_slice(b",\"commission_minor\":");
    int(r.commission_minor, out);
    out.extend_from_slice(b",\"currency\":\"");
    out.extend_from_slice(&r.currency.0);
    out.push(b'"');
    if matches!(r.kind, RecordKind::Reversal | RecordKind::Lock) {
        out.extend_from_slice(b",\"original_commission_id\":\"");
        base_id(r, item, out);
        out.push(b'"');
    }
    if let Some(id) = r.refund_event_id {
        out.extend_from_slice(b",\"refund_event_id\":");
        string(id, out);
    }
    if let Some(ts) = r.lock_ts {
        out.extend_from_slice(b",\"lock_ts\":");
        int(ts, out);
    }
    if let Some(rev) = r.revision {
        out.extend_from_slice(b",\"revision\":");
        string(rev, out);
    }
    if r.shadow {
        out.extend_from_slice(b",\"shadow\":true");
    }
    out.extend_from_slice(b"}\n");
}

/// Appends an owned record as a JSON line through `serde_json`: the reference
/// [`encode_record`] is tested against, and the encoder of tools that hold owned records.
pub fn encode_owned(record: &Record, out: &mut Vec<u8>) {
    // Serialising plain structs into a Vec cannot fail.
    serde_json::to_writer(&mut *out, record).expect("record serialises");
    out.push(b'\n');
}

/// `purchase_event_id:item_index:creator_id`, escaped, without quotes.
fn base_id(r: &RecordView<'_>, item: Option<&Item>, out: &mut Vec<u8>) {
    match item {
        Some(item) => out.extend_from_slice(&item.id_prefix),
        None => id_prefix(r, out),
    }
    esc(r.creator_id, out);
}

/// `purchase_event_id:item_index:`, escaped.
fn id_prefix(r: &RecordView<'_>, out: &mut Vec<u8>) {
    esc(r.purchase_event_id, out);
    out.push(b':');
    int(r.item_index, out);
    out.push(b':');
}

/// `,"order_id":...,"user_id":...`: the fields of the purchase item before the creator.
fn item_fields(r: &RecordView<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(b",\"order_id\":");
    string(r.order_id, out);
    out.extend_from_slice(b",\"purchase_event_id\":");
    string(r.purchase_event_id, out);
    out.extend_from_slice(b",\"item_index\":");
    int(r.item_index, out);
    out.extend_from_slice(b",\"product_id\":");
    string(r.product_id, out);
    out.extend_from_slice(b",\"quantity\":");
    int(r.quantity, out);
    out.extend_from_slice(b",\"user_id\":");
    string(r.user_id, out);
}

/// `,"purchase_ts":...,"gross_minor":...`.
fn purchase_fields(r: &RecordView<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(b",\"purchase_ts\":");
    int(r.purchase_ts, out);
    out.extend_from_slice(b",\"gross_minor\":");
    int(r.gross_minor, out);
}

#[inline]
fn int(n: impl itoa::Integer, out: &mut Vec<u8>) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Whether `s` goes into a JSON string as it is (`serde_json` escapes exactly `"`, `\`
/// and bytes below 0x20).
#[inline]
fn plain(s: &str) -> bool {
    s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\')
}

/// `s` as a quoted JSON string.
#[inline]
fn string(s: &str, out: &mut Vec<u8>) {
    if plain(s) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, s).expect("a string serialises");
    }
}

/// `s` escaped, without quotes (a part of a composite id: escapes are per character, so
/// the parts' escapes are the whole's).
#[inline]
fn esc(s: &str, out: &mut Vec<u8>) {
    if plain(s) {
        out.extend_from_slice(s.as_bytes());
    } else {
        let at = out.len();
        serde_json::to_writer(&mut *out, s).expect("a string serialises");
        out.pop();
        out.remove(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Currency, Model, TouchKind};
    use proptest::prelude::*;

    fn view<'a>(kind: RecordKind, ids: &'a [String; 8], nums: [i64; 8], shadow: bool) -> RecordView<'a> {
        RecordView {
            kind,
            order_id: &ids[0],
            purchase_event_id: &ids[1],
            item_index: nums[0] as u32,
            product_id: &ids[2],
            quantity: nums[1],
            user_id: &ids[3],
            creator_id: &ids[4],
            model: Model::PositionBased,
            weight: nums[2] as u64,
            total_weight: nums[3] as u64,
            touch_event_id: &ids[5],
            touch_type: if shadow { TouchKind::View } else { TouchKind::Click },
            touch_ts: nums[4],
            touch_count: nums[5] as u32,
            purchase_ts: nums[6],
            gross_minor: nums[7],
            share_minor: -nums[7],
            rate_bps: 1234,
            rule_id: &ids[6],
            commission_minor: i64::MIN,
            currency: Currency(*b"EUR"),
            refund_event_id: (kind == RecordKind::Reversal || shadow).then_some(ids[7].as_str()),
            lock_ts: (kind == RecordKind::Lock).then_some(nums[4]),
            revision: (kind == RecordKind::Adjustment).then_some(ids[6].as_str()),
            shadow,
        }
    }

    fn both(v: &RecordView<'_>) -> (String, String) {
        let (mut fast, mut reference) = (Vec::new(), Vec::new());
        encode_record(v, &mut fast);
        encode_owned(&v.to_record(), &mut reference);
        (String::from_utf8(fast).unwrap(), String::from_utf8(reference).unwrap())
    }

    #[test]
    fn every_kind_matches_serde_json() {
        let ids = ["o-1", "p-9", "prod", "u-1", "c-7", "k-3", "rule", "r-2"].map(String::from);
        for kind in [RecordKind::Commission, RecordKind::Reversal, RecordKind::Lock, RecordKind::Adjustment] {
            for shadow in [false, true] {
                let v = view(kind, &ids, [3, 2, 1, 4, -5, 6, i64::MAX, 1999], shadow);
                let (fast, reference) = both(&v);
                assert_eq!(fast, reference);
            }
        }
    }

    #[test]
    fn escapes_match_serde_json() {
        let ids = ["o\"1", "p\\9", "pr\nod", "u\u{1}1", "c:é", "k\u{7f}", "ru\tle", "r\u{1f}"].map(String::from);
        for kind in [RecordKind::Commission, RecordKind::Reversal, RecordKind::Lock, RecordKind::Adjustment] {
            let (fast, reference) = both(&view(kind, &ids, [0; 8], false));
            assert_eq!(fast, reference);
        }
    }

    proptest! {
        /// Records that share some, all or none of their item fields with the previous
        /// one: the encoder that reuses them writes what serde_json writes.
        #[test]
        fn a_stream_of_records_matches_serde_json(
            records in proptest::collection::vec(
                (proptest::array::uniform8(prop_oneof!["a", "b", "", "\"", ".{0,4}"].prop_map(String::from)),
                 proptest::array::uniform8(0i64..3), 0..4u8, any::<bool>()),
                0..12,
            ),
        ) {
            let mut encoder = Encoder::default();
            let (mut fast, mut reference) = (Vec::new(), Vec::new());
            for (ids, nums, kind, shadow) in &records {
                let kind = [RecordKind::Commission, RecordKind::Reversal, RecordKind::Lock, RecordKind::Adjustment][*kind as usize];
                let v = view(kind, ids, *nums, *shadow);
                encoder.encode(&v, &mut fast);
                encode_owned(&v.to_record(), &mut reference);
            }
            prop_assert_eq!(String::from_utf8(fast).unwrap(), String::from_utf8(reference).unwrap());
        }

        #[test]
        fn any_record_matches_serde_json(
            ids in proptest::array::uniform8(".{0,12}"),
            nums in proptest::array::uniform8(any::<i64>()),
            kind in 0..4u8,
            shadow in any::<bool>(),
        ) {
            let kind = [RecordKind::Commission, RecordKind::Reversal, RecordKind::Lock, RecordKind::Adjustment][kind as usize];
            let (fast, reference) = both(&view(kind, &ids, nums, shadow));
            prop_assert_eq!(fast, reference);
        }
    }
}
