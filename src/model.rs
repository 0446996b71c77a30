//! Event and record types: what comes in (SPEC §1) and what goes out (SPEC §6).
//!
//! These are plain data. Parsing and validation live in [`crate::codec`]; the rules that
//! turn events into records live in [`crate::engine`].

use std::fmt;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

/// Event time: milliseconds since the Unix epoch, UTC.
pub type Millis = i64;

/// Short strings (ids) stay inline up to 24 bytes: no heap allocation for typical ids.
pub type Str = CompactString;

/// A view or a click.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TouchKind {
    View,
    Click,
}

impl TouchKind {
    /// The `type` / `touch_type` word.
    pub fn as_str(self) -> &'static str {
        match self {
            TouchKind::View => "view",
            TouchKind::Click => "click",
        }
    }
}

/// A shopper saw (`view`) or clicked (`click`) a creator's content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Touch {
    pub kind: TouchKind,
    pub event_id: Str,
    pub ts: Millis,
    pub user_id: Str,
    pub creator_id: Str,
    /// `None`: the touch promotes the creator's whole storefront.
    pub product_id: Option<Str>,
    pub surface: Option<Str>,
}

/// One line of a purchase.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub product_id: Str,
    pub quantity: i64,
    /// Minor units (cents).
    pub unit_price: i64,
    pub category: Option<Str>,
}

impl Item {
    /// `quantity * unit_price`; the decoder rejects items where this overflows.
    pub fn gross(&self) -> i64 {
        self.quantity * self.unit_price
    }
}

/// ISO 4217 code: three upper-case ASCII letters (checked by the decoder).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency(pub [u8; 3]);

impl Currency {
    /// Parses three upper-case ASCII letters.
    pub fn parse(s: &str) -> Option<Currency> {
        let b = s.as_bytes();
        (b.len() == 3 && b.iter().all(u8::is_ascii_uppercase)).then(|| Currency([b[0], b[1], b[2]]))
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        // Only ever built from ASCII upper-case letters.
        std::str::from_utf8(&self.0).unwrap_or("???")
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Currency::parse(&s).ok_or_else(|| serde::de::Error::custom("currency must be three upper-case letters"))
    }
}

/// A shopper bought something.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purchase {
    pub event_id: Str,
    pub ts: Millis,
    pub user_id: Str,
    pub order_id: Str,
    pub currency: Currency,
    pub items: Vec<Item>,
}

/// One line of a refund: units of a product.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundItem {
    pub product_id: Str,
    pub quantity: i64,
}

/// A shopper got money back for (part of) an order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refund {
    pub event_id: Str,
    pub ts: Millis,
    pub user_id: Str,
    pub order_id: Str,
    /// `None`: the whole order is refunded.
    pub items: Option<Vec<RefundItem>>,
}

/// Any valid input event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    Touch(Touch),
    Purchase(Purchase),
    Refund(Refund),
}

/// The four event types, for counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    View,
    Click,
    Purchase,
    Refund,
}

impl EventType {
    /// All types, in display order.
    pub const ALL: [EventType; 4] = [EventType::View, EventType::Click, EventType::Purchase, EventType::Refund];

    /// The `type` word.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::View => "view",
            EventType::Click => "click",
            EventType::Purchase => "purchase",
            EventType::Refund => "refund",
        }
    }
}

impl Event {
    /// Event time.
    pub fn ts(&self) -> Millis {
        match self {
            Event::Touch(t) => t.ts,
            Event::Purchase(p) => p.ts,
            Event::Refund(r) => r.ts,
        }
    }

    /// The event's unique id.
    pub fn event_id(&self) -> &str {
        match self {
            Event::Touch(t) => &t.event_id,
            Event::Purchase(p) => &p.event_id,
            Event::Refund(r) => &r.event_id,
        }
    }

    /// The shopper: the partition key.
    pub fn user_id(&self) -> &str {
        match self {
            Event::Touch(t) => &t.user_id,
            Event::Purchase(p) => &p.user_id,
            Event::Refund(r) => &r.user_id,
        }
    }

    /// Which of the four types.
    pub fn event_type(&self) -> EventType {
        match self {
            Event::Touch(t) if t.kind == TouchKind::View => EventType::View,
            Event::Touch(_) => EventType::Click,
            Event::Purchase(_) => EventType::Purchase,
            Event::Refund(_) => EventType::Refund,
        }
    }
}

/// The attribution model (SPEC §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Model {
    #[default]
    LastTouch,
    FirstTouch,
    Linear,
    PositionBased,
    TimeDecay,
}

impl Model {
    /// The config / record word.
    pub fn as_str(self) -> &'static str {
        match self {
            Model::LastTouch => "last_touch",
            Model::FirstTouch => "first_touch",
            Model::Linear => "linear",
            Model::PositionBased => "position_based",
            Model::TimeDecay => "time_decay",
        }
    }

    /// Parses the config word.
    pub fn parse(s: &str) -> Option<Model> {
        [Model::LastTouch, Model::FirstTouch, Model::Linear, Model::PositionBased, Model::TimeDecay]
            .into_iter()
            .find(|m| m.as_str() == s)
    }
}

/// What a record is: a commission, a reversal of one, a lock of one (SPEC 8.2) or a
/// restatement adjustment (SPEC 8.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    Commission,
    Reversal,
    Lock,
    Adjustment,
}

impl RecordKind {
    /// The `kind` word.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Commission => "commission",
            RecordKind::Reversal => "reversal",
            RecordKind::Lock => "lock",
            RecordKind::Adjustment => "adjustment",
        }
    }
}

/// A record (SPEC §6, 8.2, 8.3, 8.5), owned. Field order is the wire order. The engine
/// hands out borrowed [`RecordView`]s; this is their owned form, for tests, `compare`
/// and `restate`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub commission_id: Str,
    pub kind: RecordKind,
    pub order_id: Str,
    pub purchase_event_id: Str,
    pub item_index: u32,
    pub product_id: Str,
    pub quantity: i64,
    pub user_id: Str,
    pub creator_id: Str,
    pub model: Model,
    pub weight: u64,
    pub total_weight: u64,
    pub touch_event_id: Str,
    pub touch_type: TouchKind,
    pub touch_ts: Millis,
    pub touch_count: u32,
    pub purchase_ts: Millis,
    pub gross_minor: i64,
    pub share_minor: i64,
    pub rate_bps: u32,
    pub rule_id: Str,
    pub commission_minor: i64,
    pub currency: Currency,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_commission_id: Option<Str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund_event_id: Option<Str>,
    /// Lock records: when the commission locked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_ts: Option<Millis>,
    /// Adjustment records: the restatement's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<Str>,
    /// Written by a shadow model (SPEC 8.3): never paid.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shadow: bool,
}

/// A record as the engine writes it: every field borrowed, nothing allocated. Ids that
/// are built from parts (`commission_id`, `original_commission_id`) are written by the
/// encoder from their parts:
///
/// | kind | `commission_id` | `original_commission_id` |
/// |---|---|---|
/// | commission | `purchase_event_id:item_index:creator_id` | – |
/// | reversal | `refund_event_id:item_index:creator_id` | the commission's id |
/// | lock | the commission's id + `:lock` | the commission's id |
/// | adjustment | the commission's id + `:adj:` + revision | – |
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordView<'a> {
    pub kind: RecordKind,
    pub order_id: &'a str,
    pub purchase_event_id: &'a str,
    pub item_index: u32,
    pub product_id: &'a str,
    pub quantity: i64,
    pub user_id: &'a str,
    pub creator_id: &'a str,
    pub model: Model,
    pub weight: u64,
    pub total_weight: u64,
    pub touch_event_id: &'a str,
    pub touch_type: TouchKind,
    pub touch_ts: Millis,
    pub touch_count: u32,
    pub purchase_ts: Millis,
    pub gross_minor: i64,
    pub share_minor: i64,
    pub rate_bps: u32,
    pub rule_id: &'a str,
    pub commission_minor: i64,
    pub currency: Currency,
    /// Reversals: the refund.
    pub refund_event_id: Option<&'a str>,
    /// Locks: when the commission locked.
    pub lock_ts: Option<Millis>,
    /// Adjustments: the restatement's name.
    pub revision: Option<&'a str>,
    /// Written by a shadow model.
    pub shadow: bool,
}

impl RecordView<'_> {
    /// `purchase_event_id:item_index:creator_id`: the id of the commission this record is,
    /// reverses, locks or adjusts.
    pub fn base_id(&self) -> String {
        format!("{}:{}:{}", self.purchase_event_id, self.item_index, self.creator_id)
    }

    /// The record's `commission_id`.
    pub fn commission_id(&self) -> String {
        match self.kind {
            RecordKind::Commission => self.base_id(),
            RecordKind::Reversal => {
                format!("{}:{}:{}", self.refund_event_id.unwrap_or_default(), self.item_index, self.creator_id)
            }
            RecordKind::Lock => format!("{}:lock", self.base_id()),
            RecordKind::Adjustment => format!("{}:adj:{}", self.base_id(), self.revision.unwrap_or_default()),
        }
    }

    /// The owned form (allocates; not for hot paths).
    pub fn to_record(&self) -> Record {
        let original = matches!(self.kind, RecordKind::Reversal | RecordKind::Lock).then(|| self.base_id().into());
        Record {
            commission_id: self.commission_id().into(),
            kind: self.kind,
            order_id: self.order_id.into(),
            purchase_event_id: self.purchase_event_id.into(),
            item_index: self.item_index,
            product_id: self.product_id.into(),
            quantity: self.quantity,
            user_id: self.user_id.into(),
            creator_id: self.creator_id.into(),
            model: self.model,
            weight: self.weight,
            total_weight: self.total_weight,
            touch_event_id: self.touch_event_id.into(),
            touch_type: self.touch_type,
            touch_ts: self.touch_ts,
            touch_count: self.touch_count,
            purchase_ts: self.purchase_ts,
            gross_minor: self.gross_minor,
            share_minor: self.share_minor,
            rate_bps: self.rate_bps,
            rule_id: self.rule_id.into(),
            commission_minor: self.commission_minor,
            currency: self.currency,
            original_commission_id: original,
            refund_event_id: self.refund_event_id.map(Into::into),
            lock_ts: self.lock_ts,
            revision: self.revision.map(Into::into),
            shadow: self.shadow,
        }
    }
}

impl Record {
    /// The borrowed form of an owned record (the inverse of [`RecordView::to_record`]).
    pub fn view(&self) -> RecordView<'_> {
        RecordView {
            kind: self.kind,
            order_id: &self.order_id,
            purchase_event_id: &self.purchase_event_id,
            item_index: self.item_index,
            product_id: &self.product_id,
            quantity: self.quantity,
            user_id: &self.user_id,
            creator_id: &self.creator_id,
            model: self.model,
            weight: self.weight,
            total_weight: self.total_weight,
            touch_event_id: &self.touch_event_id,
            touch_type: self.touch_type,
            touch_ts: self.touch_ts,
            touch_count: self.touch_count,
            purchase_ts: self.purchase_ts,
            gross_minor: self.gross_minor,
            share_minor: self.share_minor,
            rate_bps: self.rate_bps,
            rule_id: &self.rule_id,
            commission_minor: self.commission_minor,
            currency: self.currency,
            refund_event_id: self.refund_event_id.as_deref(),
            lock_ts: self.lock_ts,
            revision: self.revision.as_deref(),
            shadow: self.shadow,
        }
    }
}

/// Why an input was dead-lettered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterReason {
    /// Not JSON (or not UTF-8).
    InvalidJson,
    /// JSON that breaks a rule of SPEC §1.
    InvalidEvent,
    /// Over the configured message size limit.
    TooLarge,
    /// Behind the watermark by more than the allowed lateness.
    TooLate,
    /// Too far ahead of the wall clock (Kafka worker only).
    FutureTimestamp,
    /// On an input partition other than the one its `user_id` maps to (Kafka worker
    /// only, SPEC 8.6).
    Misrouted,
}

impl DeadLetterReason {
    /// All reasons, in display order.
    pub const ALL: [DeadLetterReason; 6] = [
        DeadLetterReason::InvalidJson,
        DeadLetterReason::InvalidEvent,
        DeadLetterReason::TooLarge,
        DeadLetterReason::TooLate,
        DeadLetterReason::FutureTimestamp,
        DeadLetterReason::Misrouted,
    ];

    /// The `reason` word.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::InvalidJson => "invalid_json",
            DeadLetterReason::InvalidEvent => "invalid_event",
            DeadLetterReason::TooLarge => "too_large",
            DeadLetterReason::TooLate => "too_late",
            DeadLetterReason::FutureTimestamp => "future_timestamp",
            DeadLetterReason::Misrouted => "misrouted",
        }
    }
}

/// Where an input came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SourcePos {
    File { file: String, line: u64 },
    Kafka { topic: String, partition: i32, offset: i64 },
}

/// Raw payloads in dead letters are cut here (SPEC §6).
pub const DEAD_LETTER_PAYLOAD_LIMIT: usize = 64 * 1024;

/// A dead-letter record (SPEC §6).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub reason: DeadLetterReason,
    pub error: String,
    #[serde(flatten)]
    pub source: SourcePos,
    /// The raw input, lossily decoded as UTF-8, cut at 64 KiB.
    pub payload: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub payload_truncated: bool,
}

impl DeadLetter {
    /// Builds a dead letter, cutting the payload at [`DEAD_LETTER_PAYLOAD_LIMIT`].
    pub fn new(reason: DeadLetterReason, error: String, source: SourcePos, raw: &[u8]) -> DeadLetter {
        let cut = raw.len().min(DEAD_LETTER_PAYLOAD_LIMIT);
        DeadLetter {
            reason,
            error,
            source,
            payload: String::from_utf8_lossy(&raw[..cut]).into_owned(),
            payload_truncated: cut < raw.len(),
        }
    }
}
