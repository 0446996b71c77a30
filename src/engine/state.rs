//! Per-shopper state: touches, the ids seen, the order ledger; expired by watermark.
//!
//! Every shopper has a slot in a slab, found through a hash table of slot numbers keyed
//! by the shopper's id (4 bytes per shopper in the table). A slot holds the shopper's
//! touches in `(ts, event_id)` order, as 24-byte records whose event ids live in one
//! byte arena shared by the whole engine, each behind a one-byte length. A touch keeps
//! 8 bits of its id's hash, so looking for an id among a shopper's touches reads the
//! arena only on a tag match; shoppers with many touches keep a hash set of their ids'
//! arena offsets, so a lookup is one probe and one compare. Creators and products are interned
//! (reference-counted, see [`super::intern`]). What a shopper rarely has (purchase and
//! refund ids, orders, an id index for the few shoppers with many touches) sits behind
//! one pointer.
//!
//! Duplicate detection is per shopper (SPEC §5): an id is a duplicate when the same
//! shopper already has a touch, purchase or refund with that id.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use hashbrown::HashTable;

use super::intern::{hash_bytes, Interner};
use super::ledger::Order;
use crate::model::{Millis, Str, TouchKind};

/// `product` of a storefront touch (one without `product_id`).
pub const STOREFRONT: u32 = u32::MAX;

const FLAG_CLICK: u8 = 1;
const FLAG_SELF: u8 = 2;

/// Shoppers with more touches than this get an index of their touch ids.
const INDEX_FROM: usize = 8;

/// A 128-bit hash of a purchase or refund id: the key of their duplicate detection.
pub fn id_hash(event_id: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(event_id.as_bytes())
}

/// A touch as kept in state (24 bytes). Its event id is in the engine's arena: read it
/// with [`Shoppers::touch_id`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoredTouch {
    pub ts: Millis,
    /// Interned creator id.
    pub creator: u32,
    /// Interned product id, or [`STOREFRONT`].
    pub product: u32,
    /// Offset of the event id in the arena (low 32 of 40 bits): its length minus one
    /// (ids are 1 to 256 bytes), then its bytes.
    id_off: u32,
    /// The top 8 bits of the id's [`hash_bytes`]: most ids that differ differ here, so a
    /// scan for an id rarely reads the arena.
    id_tag: u8,
    /// [`FLAG_CLICK`], [`FLAG_SELF`].
    flags: u8,
    /// Index of the touch's surface in the engine's surface registry (0: none / other).
    pub surface: u8,
    /// High 8 of the 40 offset bits.
    id_off_hi: u8,
}

impl StoredTouch {
    /// View or click.
    #[inline]
    pub fn kind(&self) -> TouchKind {
        if self.flags & FLAG_CLICK != 0 {
            TouchKind::Click
        } else {
            TouchKind::View
        }
    }

    /// The creator is the shopper.
    #[inline]
    pub fn is_self(&self) -> bool {
        self.flags & FLAG_SELF != 0
    }

    /// Where the id's entry (length byte, then the id) starts in the arena.
    #[inline]
    fn id_off(&self) -> usize {
        (usize::from(self.id_off_hi) << 32) | self.id_off as usize
    }

    #[inline]
    fn set_id_off(&mut self, off: usize) {
        self.id_off = off as u32;
        self.id_off_hi = (off >> 32) as u8;
    }
}

/// The id stored at `off` in `arena` (see [`StoredTouch::id_off`]).
#[inline]
fn arena_id(arena: &[u8], off: usize) -> &[u8] {
    let len = usize::from(arena[off]) + 1;
    &arena[off + 1..off + 1 + len]
}

/// The arena offsets of a shopper's touch ids, found by id hash. An entry is the
/// offset (40 bits) beside 24 more bits of the id's hash, from which its table hash is
/// made: the table grows without reading the arena (a cache miss per id), and a lookup
/// reads an id only when those 24 bits match.
#[derive(Clone, Debug, Default)]
struct IdIndex(HashTable<u64>);

const OFF_BITS: u32 = 40;
const OFF_MASK: u64 = (1 << OFF_BITS) - 1;

impl IdIndex {
    /// The 24 bits of an id hash kept in the entry (below the touch's tag bits).
    #[inline]
    fn key(hash: u64) -> u64 {
        (hash >> 32) & 0xFF_FFFF
    }

    /// The table hash of a key: multiplied so that all 24 bits reach hashbrown's top-7-bit
    /// control byte as well as the low bits that pick the bucket.
    #[inline]
    fn table_hash(key: u64) -> u64 {
        (key | 1 << 24).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    fn with_capacity(n: usize) -> IdIndex {
        IdIndex(HashTable::with_capacity(n))
    }

    #[inline]
    fn contains(&self, arena: &[u8], id: &[u8], hash: u64) -> bool {
        let key = Self::key(hash);
        self.0
            .find(Self::table_hash(key), |&e| e >> OFF_BITS == key && arena_id(arena, (e & OFF_MASK) as usize) == id)
            .is_some()
    }

    #[inline]
    fn insert(&mut self, hash: u64, off: usize) {
        let key = Self::key(hash);
        self.0.insert_unique(Self::table_hash(key), key << OFF_BITS | off as u64, |&e| Self::table_hash(e >> OFF_BITS));
    }

    fn remove(&mut self, hash: u64, off: usize) {
        if let Ok(e) = self.0.find_entry(Self::table_hash(Self::key(hash)), |&e| e & OFF_MASK == off as u64) {
            e.remove();
        }
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

/// The tag of an id hash ([`StoredTouch::id_tag`]).
#[inline]
fn tag_of(hash: u64) -> u8 {
    (hash >> 56) as u8
}

/// One shopper's touches in `(ts, event_id)` order. Dropping the oldest (the cap,
/// expiry) only moves a start index; the dead prefix is reclaimed once it is half the
/// buffer, so a capped shopper's stream of touches costs O(1) each, not a shift.
#[derive(Clone, Debug, Default)]
pub struct Touches {
    buf: Vec<StoredTouch>,
    head: u32,
}

impl Touches {
    /// The live touches.
    #[inline]
    pub fn as_slice(&self) -> &[StoredTouch] {
        &self.buf[self.head as usize..]
    }

    #[inline]
    fn as_mut_slice(&mut self) -> &mut [StoredTouch] {
        &mut self.buf[self.head as usize..]
    }

    /// How many.
    #[inline]
    pub fn len(&self) -> usize {
        self.buf.len() - self.head as usize
    }

    /// None.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn insert(&mut self, pos: usize, t: StoredTouch) {
        if self.buf.len() == self.buf.capacity() {
            if self.head > 0 {
                self.reclaim();
            }
            // 2, 3, 5, 8, 13, ...: little slack for the many shoppers with a few touches.
            let len = self.buf.len();
            self.buf.reserve_exact(if len == 0 { 2 } else { (len * 2 / 3).max(1) });
        }
        self.buf.insert(self.head as usize + pos, t);
    }

    /// Drops the `n` oldest touches (callers read them first).
    fn advance(&mut self, n: usize) {
        self.head += n as u32;
        if self.head as usize == self.buf.len() {
            self.buf.clear();
            self.head = 0;
        } else {
            self.maybe_reclaim();
        }
    }

    fn reclaim(&mut self) {
        self.buf.drain(..self.head as usize);
        self.head = 0;
    }

    /// Reclaims the dead prefix when it is at least half the buffer.
    fn maybe_reclaim(&mut self) {
        if self.head as usize >= 8 && self.head as usize * 2 >= self.buf.len() {
            self.reclaim();
        }
    }
}

/// What a shopper rarely has.
#[derive(Clone, Debug, Default)]
pub struct Cold {
    /// Purchase and refund ids seen, with their event time, until too late to repeat.
    pub seen: Vec<(Millis, u128)>,
    /// The order ledger (SPEC §4): final purchases, oldest first.
    orders: Vec<Order>,
    /// `order_hash` of each of `orders`, side by side: a search for an order id reads
    /// 8 bytes per order instead of one or two cache lines.
    order_hashes: Vec<u64>,
    /// Order hash → how many of `orders` have it, for shoppers with many orders: a new
    /// order id (every purchase looks its id up) is known absent without a scan.
    order_index: Option<HashMap<u64, u32, ahash::RandomState>>,
    /// Purchases and refunds of this shopper waiting for the watermark.
    pub pending: u32,
    /// Arena offsets of the touch ids, by id hash, for shoppers with many touches.
    id_index: Option<IdIndex>,
    /// The hashes of `seen`, for shoppers with many purchases and refunds.
    seen_index: Option<SeenIndex>,
    /// The earliest watermark at which a seen id or an order expires.
    expires: Millis,
}

/// Shoppers with more purchase and refund ids than this get a hash set of them.
const SEEN_INDEX_FROM: usize = 16;

/// A set of [`id_hash`]es. They are hashes already: the table uses their low 64 bits
/// instead of hashing them again.
#[derive(Clone, Debug, Default)]
struct SeenIndex(HashTable<u128>);

impl SeenIndex {
    fn insert(&mut self, hash: u128) {
        if !self.contains(hash) {
            self.0.insert_unique(hash as u64, hash, |&h| h as u64);
        }
    }

    #[inline]
    fn contains(&self, hash: u128) -> bool {
        self.0.find(hash as u64, |&h| h == hash).is_some()
    }
}

impl FromIterator<u128> for SeenIndex {
    fn from_iter<I: IntoIterator<Item = u128>>(iter: I) -> SeenIndex {
        let mut index = SeenIndex::default();
        for h in iter {
            index.insert(h);
        }
        index
    }
}

/// Shoppers with more orders than this get an index of their order hashes.
const ORDER_INDEX_FROM: usize = 16;

impl Cold {
    fn is_empty(&self) -> bool {
        self.seen.is_empty() && self.orders.is_empty() && self.pending == 0
    }

    /// Remembers a purchase or refund id.
    pub fn add_seen(&mut self, ts: Millis, hash: u128, r: &Retention) {
        self.seen.push((ts, hash));
        self.expires = self.expires.min(ts.saturating_add(r.ids));
        match &mut self.seen_index {
            Some(index) => {
                index.insert(hash);
            }
            None if self.seen.len() > SEEN_INDEX_FROM => {
                self.seen_index = Some(self.seen.iter().map(|x| x.1).collect());
            }
            None => {}
        }
    }

    /// Adds a final purchase to the ledger.
    pub fn add_order(&mut self, order: Order, r: &Retention) {
        self.expires = self.expires.min(order.kept_until(r.orders));
        self.order_hashes.push(order.order_hash);
        match &mut self.order_index {
            Some(index) => *index.entry(order.order_hash).or_insert(0) += 1,
            None if self.order_hashes.len() > ORDER_INDEX_FROM => self.index_orders(),
            None => {}
        }
        self.orders.push(order);
    }

    /// The order ledger, oldest first.
    pub fn orders(&self) -> &[Order] {
        &self.orders
    }

    /// The orders, to change in place (not their ids).
    pub fn orders_mut(&mut self) -> &mut [Order] {
        &mut self.orders
    }

    /// Replaces the ledger (a restore); the caller then calls [`Cold::reindex`].
    pub fn set_orders(&mut self, orders: Vec<Order>) {
        self.orders = orders;
        self.rehash_orders();
    }

    /// Takes order `i` out of the ledger; the caller then calls [`Cold::reindex`].
    pub fn remove_order(&mut self, i: usize) -> Order {
        let hash = self.order_hashes.remove(i);
        if let Some(index) = &mut self.order_index {
            if let Some(n) = index.get_mut(&hash) {
                *n -= 1;
                if *n == 0 {
                    index.remove(&hash);
                }
            }
        }
        self.orders.remove(i)
    }

    /// Positions in the ledger of the orders with this `order_hash`, oldest first.
    pub fn orders_with_hash(&self, hash: u64) -> impl DoubleEndedIterator<Item = usize> + '_ {
        debug_assert_eq!(self.order_hashes.len(), self.orders.len(), "order hashes follow the orders");
        let absent = self.order_index.as_ref().is_some_and(|index| !index.contains_key(&hash));
        let hashes = if absent { &[][..] } else { &self.order_hashes[..] };
        hashes.iter().enumerate().filter(move |&(_, &h)| h == hash).map(|(i, _)| i)
    }

    /// Recomputes `order_hashes` and `order_index` from `orders`.
    fn rehash_orders(&mut self) {
        self.order_hashes.clear();
        self.order_hashes.extend(self.orders.iter().map(|o| o.order_hash));
        self.order_index = None;
        if self.order_hashes.len() > ORDER_INDEX_FROM {
            self.index_orders();
        }
    }

    fn index_orders(&mut self) {
        let mut index: HashMap<u64, u32, ahash::RandomState> = HashMap::default();
        for &h in &self.order_hashes {
            *index.entry(h).or_insert(0) += 1;
        }
        self.order_index = Some(index);
    }

    /// Whether a purchase or refund with this id hash was seen.
    fn has_seen(&self, hash: u128) -> bool {
        match &self.seen_index {
            Some(index) => index.contains(hash),
            None => self.seen.iter().any(|&(_, h)| h == hash),
        }
    }

    /// Recomputes what [`Cold::add_seen`] and [`Cold::add_order`] keep up to date.
    pub fn reindex(&mut self, r: &Retention) {
        let seen = self.seen.iter().map(|x| x.0.saturating_add(r.ids));
        let orders = self.orders.iter().map(|o| o.kept_until(r.orders));
        self.expires = seen.chain(orders).min().unwrap_or(Millis::MAX);
        self.seen_index = (self.seen.len() > SEEN_INDEX_FROM).then(|| self.seen.iter().map(|x| x.1).collect());
    }
}

/// One shopper.
#[derive(Clone, Debug, Default)]
pub struct Shopper {
    /// Empty for a free slot.
    pub user_id: Str,
    /// In `(ts, event_id)` order.
    pub touches: Touches,
    pub cold: Option<Box<Cold>>,
    /// The watermark at which this shopper is queued for expiry (`Millis::MAX`: not
    /// queued).
    queued_at: Millis,
}

impl Shopper {
    /// The cold part, created when missing.
    pub fn cold_mut(&mut self) -> &mut Cold {
        self.cold.get_or_insert_with(|| Box::new(Cold { expires: Millis::MAX, ..Cold::default() }))
    }
}

/// How long each kind of state is kept, in event time behind the watermark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Touches: while `ts >= W - touches`.
    pub touches: Millis,
    /// Purchase and refund ids: while `ts >= W - ids`.
    pub ids: Millis,
    /// Orders: while `purchase_ts >= W - orders`, and until their lock is written
    /// (see [`Order::kept_until`]).
    pub orders: Millis,
}

/// The touch cap, `max_touches_per_user` (SPEC 5): of the touches at or before its time,
/// a purchase is credited from the newest `max` only (see
/// [`EligibleWindows`](super::attribution::EligibleWindows)). Which touches the store may
/// drop must not depend on the order events arrive in, or on what arrived after the
/// purchase: a touch is dropped once `max` newer touches of its shopper lie before the
/// horizon, the watermark minus the allowed lateness, before which every purchase still
/// to be attributed lies too. So a shopper holds at most `max` touches, plus those newer
/// than the horizon; as a memory bound it never holds more than `max + max(max, 10,000)`,
/// dropping the oldest beyond that (then, and only then, arrival order matters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cap {
    pub max: usize,
    /// The watermark minus the allowed lateness.
    pub horizon: Millis,
}

impl Cap {
    /// No cap: a restore of touches that were capped when they were written.
    pub const NONE: Cap = Cap { max: usize::MAX, horizon: Millis::MIN };
    /// Touches newer than the horizon kept beyond the cap, at least.
    const HEADROOM: usize = 10_000;

    /// How many of `touches` (in `(ts, event_id)` order) to drop, oldest first.
    #[inline]
    fn excess(self, touches: &[StoredTouch]) -> usize {
        if touches.len() <= self.max {
            return 0;
        }
        // Only touches settled beyond the first `max` count: one probe tells whether
        // there are any, and there are few (the horizon moves a little at a time), so
        // they are found from `max` on rather than by a search over the whole slice,
        // whose probes miss the cache for a shopper this large.
        let over = if touches[self.max].ts < self.horizon {
            1 + gallop(&touches[self.max + 1..], |t| t.ts < self.horizon)
        } else {
            0
        };
        over.max(touches.len().saturating_sub(self.limit()))
    }

    /// The most touches a shopper ever holds.
    pub fn limit(self) -> usize {
        self.max.saturating_add(self.max.max(Cap::HEADROOM))
    }
}

/// `slice.partition_point(pred)` for a point expected near the start: probes 1, 2, 4, ...
/// from the start, then searches the last step.
#[inline]
fn gallop<T>(slice: &[T], pred: impl Fn(&T) -> bool) -> usize {
    let mut lo = 0;
    let mut step = 1;
    while lo + step <= slice.len() && pred(&slice[lo + step - 1]) {
        lo += step;
        step *= 2;
    }
    let hi = (lo + step).min(slice.len());
    lo + slice[lo..hi].partition_point(pred)
}

/// `slice.partition_point(pred)` for a point expected near the end: probes 1, 2, 4, ...
/// back from the end, then searches the last step.
#[inline]
fn gallop_back<T>(slice: &[T], pred: impl Fn(&T) -> bool) -> usize {
    let mut hi = slice.len(); // `slice[hi..]` fails `pred`
    let mut step = 1;
    while step <= hi && !pred(&slice[hi - step]) {
        hi -= step;
        step *= 2;
    }
    let lo = hi.saturating_sub(step);
    lo + slice[lo..hi].partition_point(pred)
}

/// What [`Shoppers::insert_touch`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inserted {
    /// Stored. `over_cap`: the shopper now has more than `max_touches_per_user` touches,
    /// so this one pushed the oldest out of reach of every later purchase (SPEC 5: "the
    /// oldest go first, counted"); the store drops it once nothing still to come can need
    /// it ([`Cap`]).
    Stored { over_cap: bool },
    /// This shopper already has a touch, purchase or refund with this event id.
    Duplicate,
}

/// A touch to store.
pub struct NewTouch<'a> {
    pub kind: TouchKind,
    pub event_id: &'a str,
    pub ts: Millis,
    pub creator_id: &'a str,
    pub product_id: Option<&'a str>,
    pub surface: u8,
}

/// Every shopper of one engine.
#[derive(Clone, Debug, Default)]
pub struct Shoppers {
    index: HashTable<u32>,
    slab: Vec<Shopper>,
    free: Vec<u32>,
    /// Min-heap of (watermark at which something of the shopper expires, slot); an
    /// entry whose time differs from the shopper's `queued_at` is stale.
    expiry: BinaryHeap<Reverse<(Millis, u32)>>,
    /// Event ids of stored touches; dropped touches leave `garbage` bytes.
    arena: Vec<u8>,
    garbage: usize,
    pub creators: Interner,
    pub products: Interner,
    live: usize,
    count: usize,
    /// Orders in all ledgers (kept by the engine and by expiry).
    pub(crate) orders: usize,
    /// Slots changed since [`Shoppers::take_dirty`] last ran, and whether each slot
    /// is in that list (bit per slot).
    dirty: Vec<u32>,
    dirty_bits: Vec<u64>,
    /// Ids of shoppers removed since the last [`Shoppers::take_dirty`].
    removed: Vec<Str>,
    /// Whether dirty tracking is on (the worker's checkpoints); replay leaves it off.
    track: bool,
}

impl Shoppers {
    /// Turns tracking of changed shoppers on (for incremental checkpoints).
    pub fn track_changes(&mut self, on: bool) {
        self.track = on;
    }

    #[inline]
    fn hash_user(user_id: &str) -> u64 {
        hash_bytes(user_id.as_bytes())
    }

    /// The slot of a shopper, if known.
    #[inline]
    pub fn find(&self, user_id: &str) -> Option<u32> {
        let slab = &self.slab;
        self.index.find(Self::hash_user(user_id), |&s| slab[s as usize].user_id == user_id).copied()
    }

    /// The slot of a shopper, created when new.
    pub fn find_or_insert(&mut self, user_id: &str) -> u32 {
        let hash = Self::hash_user(user_id);
        let slab = &self.slab;
        if let Some(&s) = self.index.find(hash, |&s| slab[s as usize].user_id == user_id) {
            return s;
        }
        let shopper =
            Shopper { user_id: user_id.into(), touches: Touches::default(), cold: None, queued_at: Millis::MAX };
        let slot = match self.free.pop() {
            Some(s) => {
                self.slab[s as usize] = shopper;
                s
            }
            None => {
                self.slab.push(shopper);
                (self.slab.len() - 1) as u32
            }
        };
        let slab = &self.slab;
        self.index.insert_unique(hash, slot, |&s| Self::hash_user(&slab[s as usize].user_id));
        self.count += 1;
        slot
    }

    /// A shopper by slot.
    #[inline]
    pub fn get(&self, slot: u32) -> &Shopper {
        &self.slab[slot as usize]
    }

    /// A shopper by slot, marked changed.
    #[inline]
    pub fn get_mut(&mut self, slot: u32) -> &mut Shopper {
        self.mark(slot);
        &mut self.slab[slot as usize]
    }

    /// A shopper by slot, marked changed, beside the creator names.
    #[inline]
    pub fn get_mut_with_creators(&mut self, slot: u32) -> (&mut Shopper, &Interner) {
        self.mark(slot);
        (&mut self.slab[slot as usize], &self.creators)
    }

    #[inline]
    fn mark(&mut self, slot: u32) {
        if self.track {
            let (word, bit) = (slot as usize / 64, slot % 64);
            if self.dirty_bits.len() <= word {
                self.dirty_bits.resize(word + 1, 0);
            }
            if self.dirty_bits[word] & (1 << bit) == 0 {
                self.dirty_bits[word] |= 1 << bit;
                self.dirty.push(slot);
            }
        }
    }

    /// The event id of a stored touch.
    #[inline]
    pub fn touch_id(&self, t: &StoredTouch) -> &str {
        // Ids are copied in from `&str` and sliced at their own boundaries.
        std::str::from_utf8(self.id_bytes(t)).expect("event ids in the arena are UTF-8")
    }

    #[inline]
    fn id_bytes(&self, t: &StoredTouch) -> &[u8] {
        arena_id(&self.arena, t.id_off())
    }

    /// Whether shopper `slot` has a touch with this event id.
    pub fn has_touch_id(&self, slot: u32, id: &str) -> bool {
        self.has_touch_hashed(slot, id.as_bytes(), hash_bytes(id.as_bytes()))
    }

    /// [`Shoppers::has_touch_id`] with the id's [`hash_bytes`] at hand.
    #[inline]
    fn has_touch_hashed(&self, slot: u32, id: &[u8], hash: u64) -> bool {
        let s = &self.slab[slot as usize];
        let arena = &self.arena;
        if let Some(index) = s.cold.as_ref().and_then(|c| c.id_index.as_ref()) {
            return index.contains(arena, id, hash);
        }
        let tag = tag_of(hash);
        s.touches.as_slice().iter().any(|t| t.id_tag == tag && arena_id(arena, t.id_off()) == id)
    }

    /// Whether shopper `slot` has seen a purchase or refund with this id hash.
    pub fn has_seen(&self, slot: u32, hash: u128) -> bool {
        self.slab[slot as usize].cold.as_ref().is_some_and(|c| c.has_seen(hash))
    }

    /// Stores a touch of shopper `slot`, keeping at most `cap` touches per shopper (the
    /// oldest go first). The caller checked for duplicates among purchase and refund ids.
    pub fn insert_touch(&mut self, slot: u32, t: &NewTouch<'_>, cap: Cap, retention: &Retention) -> Inserted {
        let id = t.event_id.as_bytes();
        let hash = hash_bytes(id);
        if self.has_touch_hashed(slot, id, hash) {
            return Inserted::Duplicate;
        }
        let creator = self.creators.acquire(t.creator_id);
        let product = t.product_id.map_or(STOREFRONT, |p| self.products.acquire(p));
        debug_assert!(!id.is_empty() && id.len() <= 256, "the decoder bounds ids to 1..=256 bytes");
        let off = self.arena.len();
        self.arena.push((id.len() - 1) as u8);
        self.arena.extend_from_slice(id);
        self.mark(slot);
        let shopper = &mut self.slab[slot as usize];
        let is_self = t.creator_id == shopper.user_id.as_str();
        let mut stored = StoredTouch {
            ts: t.ts,
            creator,
            product,
            id_off: 0,
            id_tag: tag_of(hash),
            flags: if t.kind == TouchKind::Click { FLAG_CLICK } else { 0 } | if is_self { FLAG_SELF } else { 0 },
            surface: t.surface,
            id_off_hi: 0,
        };
        stored.set_id_off(off);
        let arena = &self.arena;
        // `(ts, event_id)` order; the id (in the arena, a cache miss) only breaks ties.
        // Ids are unique per shopper (checked above): the key is never found.
        let before = |x: &StoredTouch| x.ts < t.ts || (x.ts == t.ts && arena_id(arena, x.id_off()) < id);
        // Touches mostly arrive in time order, or a little late: search back from the end.
        let live = shopper.touches.as_slice();
        let pos = gallop_back(live, before);
        shopper.touches.insert(pos, stored);
        self.live += 1;
        if let Some(index) = shopper.cold.as_mut().and_then(|c| c.id_index.as_mut()) {
            index.insert(hash, off);
        } else if shopper.touches.len() > INDEX_FROM {
            let mut index = IdIndex::with_capacity(shopper.touches.len() * 2);
            for x in shopper.touches.as_slice() {
                index.insert(hash_bytes(arena_id(arena, x.id_off())), x.id_off());
            }
            shopper.cold_mut().id_index = Some(index);
        }
        let touches = self.slab[slot as usize].touches.as_slice();
        let over_cap = touches.len() > cap.max;
        let excess = cap.excess(touches);
        if excess > 0 {
            self.drop_oldest(slot, excess);
        }
        // Only a new oldest touch makes the shopper expire sooner (dropping the oldest
        // makes it later): otherwise it is queued early enough already, and requeue
        // would read its oldest touch, a cache miss for a shopper with many.
        if pos == 0 {
            self.requeue(slot, retention);
        }
        Inserted::Stored { over_cap }
    }

    /// Drops the `n` oldest touches of shopper `slot`, releasing what they hold.
    fn drop_oldest(&mut self, slot: u32, n: usize) {
        let shopper = &mut self.slab[slot as usize];
        let mut dropped = [StoredTouch::default(); 1];
        let many: Vec<StoredTouch>;
        let dropped: &[StoredTouch] = if n == 1 {
            dropped[0] = shopper.touches.as_slice()[0];
            &dropped
        } else {
            many = shopper.touches.as_slice()[..n].to_vec();
            &many
        };
        shopper.touches.advance(n);
        if let Some(index) = shopper.cold.as_mut().and_then(|c| c.id_index.as_mut()) {
            for t in dropped {
                index.remove(hash_bytes(arena_id(&self.arena, t.id_off())), t.id_off());
            }
        }
        for t in dropped {
            self.release_touch(t);
        }
    }

    fn release_touch(&mut self, t: &StoredTouch) {
        self.creators.release(t.creator);
        if t.product != STOREFRONT {
            self.products.release(t.product);
        }
        self.garbage += usize::from(self.arena[t.id_off()]) + 2;
        self.live -= 1;
    }

    /// Queues shopper `slot` for expiry at the earliest watermark at which something of
    /// it expires, unless it is queued earlier already.
    pub fn requeue(&mut self, slot: u32, r: &Retention) {
        let s = &mut self.slab[slot as usize];
        let mut at = Millis::MAX;
        if let Some(t) = s.touches.as_slice().first() {
            at = at.min(t.ts.saturating_add(r.touches));
        }
        if let Some(c) = &s.cold {
            at = at.min(c.expires);
        }
        if at < s.queued_at {
            s.queued_at = at;
            self.expiry.push(Reverse((at, slot)));
        }
    }

    /// Expires everything behind watermark `w`: touches with `ts < w - touches`, ids with
    /// `ts < w - ids`, orders bought before `w - orders` whose lock is written; empty shoppers are removed.
    pub fn expire(&mut self, w: Millis, r: &Retention) {
        while let Some(&Reverse((at, slot))) = self.expiry.peek() {
            // Something expires once the watermark is past `at`.
            if at >= w {
                break;
            }
            self.expiry.pop();
            let s = &mut self.slab[slot as usize];
            if s.queued_at != at || s.user_id.is_empty() {
                continue; // stale: the shopper is queued under another time, or gone
            }
            s.queued_at = Millis::MAX;
            let bound = w.saturating_sub(r.touches);
            let n = s.touches.as_slice().partition_point(|t| t.ts < bound);
            let mut changed = n > 0;
            if n > 0 {
                self.drop_oldest(slot, n);
            }
            let s = &mut self.slab[slot as usize];
            let mut expired = Vec::new();
            if let Some(c) = s.cold.as_mut() {
                let ids = w.saturating_sub(r.ids);
                let (before_seen, before_orders) = (c.seen.len(), c.orders.len());
                c.seen.retain(|&(ts, _)| ts >= ids);
                c.orders.retain_mut(|o| {
                    // Kept while `kept_until >= w`: until its lock, at least.
                    let keep = o.kept_until(r.orders) >= w;
                    if !keep {
                        expired.push(std::mem::take(o));
                    }
                    keep
                });
                if c.orders.len() != before_orders {
                    c.rehash_orders();
                }
                let dropped = c.seen.len() != before_seen || c.orders.len() != before_orders;
                if dropped {
                    c.reindex(r);
                }
                changed |= dropped;
                if s.touches.is_empty() {
                    c.id_index = None;
                }
                if c.is_empty() && c.id_index.is_none() {
                    s.cold = None;
                }
            }
            self.orders -= expired.len();
            for o in &expired {
                o.release(&mut self.creators);
            }
            if changed {
                self.mark(slot);
            }
            self.maybe_remove(slot);
            if !self.slab[slot as usize].user_id.is_empty() {
                self.requeue(slot, r);
            }
        }
        if self.garbage > (1 << 20) && self.garbage * 2 > self.arena.len() {
            self.compact();
        }
    }

    /// Removes shopper `slot` when it holds nothing any more.
    pub fn maybe_remove(&mut self, slot: u32) {
        let s = &self.slab[slot as usize];
        if s.user_id.is_empty() || !s.touches.is_empty() || s.cold.as_ref().is_some_and(|c| !c.is_empty()) {
            return;
        }
        let hash = Self::hash_user(&s.user_id);
        if let Ok(e) = self.index.find_entry(hash, |&x| x == slot) {
            e.remove();
        }
        let s = std::mem::take(&mut self.slab[slot as usize]);
        if self.track {
            self.removed.push(s.user_id);
        }
        self.slab[slot as usize].queued_at = Millis::MAX;
        self.free.push(slot);
        self.count -= 1;
    }

    /// Rewrites the arena without the ids of dropped touches (and the id indexes, which
    /// hold arena offsets).
    fn compact(&mut self) {
        let mut arena = Vec::with_capacity(self.arena.len() - self.garbage);
        for s in &mut self.slab {
            for t in s.touches.as_mut_slice() {
                let old = t.id_off();
                let len = usize::from(self.arena[old]) + 2;
                let off = arena.len();
                arena.extend_from_slice(&self.arena[old..old + len]);
                t.set_id_off(off);
            }
            if let Some(index) = s.cold.as_mut().and_then(|c| c.id_index.as_mut()) {
                index.clear();
                for t in s.touches.as_slice() {
                    index.insert(hash_bytes(arena_id(&arena, t.id_off())), t.id_off());
                }
            }
        }
        self.arena = arena;
        self.garbage = 0;
    }

    /// Rebuilds the expiry queue (after the retention changed with the config).
    pub fn requeue_all(&mut self, r: &Retention) {
        self.expiry.clear();
        for slot in 0..self.slab.len() as u32 {
            if let Some(c) = self.slab[slot as usize].cold.as_mut() {
                c.reindex(r);
            }
            if !self.slab[slot as usize].user_id.is_empty() {
                self.slab[slot as usize].queued_at = Millis::MAX;
                self.requeue(slot, r);
            }
        }
    }

    /// Shoppers changed and removed since the last call (for incremental checkpoints).
    pub fn take_dirty(&mut self) -> (Vec<u32>, Vec<Str>) {
        for &slot in &self.dirty {
            self.dirty_bits[slot as usize / 64] &= !(1 << (slot % 64));
        }
        (std::mem::take(&mut self.dirty), std::mem::take(&mut self.removed))
    }

    /// Every live slot.
    pub fn slots(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.slab.len() as u32).filter(|&s| !self.slab[s as usize].user_id.is_empty())
    }

    /// Touches currently stored.
    pub fn live(&self) -> usize {
        self.live
    }

    /// Shoppers in state.
    pub fn len(&self) -> usize {
        self.count
    }

    /// No shopper in state.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Shoppers with at least one touch.
    pub fn with_touches(&self) -> usize {
        self.slab.iter().filter(|s| !s.touches.is_empty()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: Retention = Retention { touches: 100, ids: 10, orders: 1000 };

    /// The cap as it was before horizons: every touch lies before the horizon.
    fn cap(max: usize) -> Cap {
        Cap { max, horizon: Millis::MAX }
    }

    fn click<'a>(id: &'a str, ts: Millis) -> NewTouch<'a> {
        NewTouch { kind: TouchKind::Click, event_id: id, ts, creator_id: "c", product_id: None, surface: 0 }
    }

    fn ids(s: &Shoppers, user: &str) -> Vec<String> {
        s.find(user)
            .map(|u| s.get(u).touches.as_slice().iter().map(|t| s.touch_id(t).to_string()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn keeps_touch_order_and_detects_duplicates_per_shopper() {
        let mut s = Shoppers::default();
        let u = s.find_or_insert("u");
        assert_eq!(s.insert_touch(u, &click("b", 20), cap(10), &R), Inserted::Stored { over_cap: false });
        assert_eq!(s.insert_touch(u, &click("a", 10), cap(10), &R), Inserted::Stored { over_cap: false });
        assert_eq!(s.insert_touch(u, &click("a2", 20), cap(10), &R), Inserted::Stored { over_cap: false });
        assert_eq!(s.insert_touch(u, &click("a", 10), cap(10), &R), Inserted::Duplicate);
        // The same id at another time is still a duplicate for the same shopper...
        assert_eq!(s.insert_touch(u, &click("a", 99), cap(10), &R), Inserted::Duplicate);
        // ...but another shopper's id space is its own.
        let u2 = s.find_or_insert("u2");
        assert_eq!(s.insert_touch(u2, &click("b", 20), cap(10), &R), Inserted::Stored { over_cap: false });
        assert_eq!(ids(&s, "u"), ["a", "a2", "b"]);
        assert_eq!(s.live(), 4);
    }

    #[test]
    fn gallops_find_the_partition_point() {
        for n in 0..70usize {
            let v: Vec<usize> = (0..n).collect();
            for cut in 0..=n {
                assert_eq!(gallop(&v, |&x| x < cut), cut, "n {n} cut {cut}");
                assert_eq!(gallop_back(&v, |&x| x < cut), cut, "n {n} cut {cut}");
            }
        }
    }

    #[test]
    fn ids_with_the_same_tag_are_told_apart() {
        let tag = |id: &str| tag_of(hash_bytes(id.as_bytes()));
        let first = tag("k0");
        let twin = (1..).map(|i| format!("k{i}")).find(|id| tag(id) == first).expect("a tag repeats");
        let mut s = Shoppers::default();
        let u = s.find_or_insert("u");
        assert_eq!(s.insert_touch(u, &click("k0", 1), cap(10), &R), Inserted::Stored { over_cap: false });
        assert_eq!(s.insert_touch(u, &click(&twin, 2), cap(10), &R), Inserted::Stored { over_cap: false });
        assert_eq!(s.insert_touch(u, &click(&twin, 3), cap(10), &R), Inserted::Duplicate);
        assert_eq!(ids(&s, "u"), ["k0", twin.as_str()]);
    }

    #[test]
    fn order_lookups_follow_adds_removals_and_restores() {
        let order = |hash: u64, ts: Millis| Order { order_hash: hash, purchase_ts: ts, ..Order::default() };
        let brute = |c: &Cold, hash: u64| -> Vec<usize> {
            c.orders().iter().enumerate().filter(|(_, o)| o.order_hash == hash).map(|(i, _)| i).collect()
        };
        let mut c = Cold::default();
        for i in 0..40u64 {
            c.add_order(order(i % 7, i as Millis), &R);
            for h in [0, 3, 6, 7] {
                assert_eq!(c.orders_with_hash(h).collect::<Vec<_>>(), brute(&c, h), "after add {i}");
            }
        }
        for i in [39, 0, 5, 5, 20] {
            c.remove_order(i);
            for h in 0..8 {
                assert_eq!(c.orders_with_hash(h).collect::<Vec<_>>(), brute(&c, h), "after remove {i}");
            }
        }
        let kept: Vec<Order> = c.orders()[..3].to_vec();
        c.set_orders(kept);
        for h in 0..8 {
            assert_eq!(
                c.orders_with_hash(h).rev().collect::<Vec<_>>(),
                brute(&c, h).into_iter().rev().collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn cap_drops_the_oldest() {
        let mut s = Shoppers::default();
        let u = s.find_or_insert("u");
        for (i, ts) in [5, 1, 3, 4].into_iter().enumerate() {
            s.insert_touch(u, &click(&format!("k{i}"), ts), cap(3), &R);
        }
        assert_eq!(ids(&s, "u"), ["k2", "k3", "k0"]);
        assert_eq!(s.live(), 3);
    }

    #[test]
    fn cap_keeps_touches_newer_than_the_horizon_up_to_twice_the_cap() {
        let mut s = Shoppers::default();
        let u = s.find_or_insert("u");
        let at = |horizon| Cap { max: 3, horizon };
        for ts in [1, 2, 3, 4, 5] {
            s.insert_touch(u, &click(&format!("k{ts}"), ts), at(2), &R);
        }
        // Only k1 lies before the horizon: a purchase still to come may need all five.
        assert_eq!(ids(&s, "u"), ["k1", "k2", "k3", "k4", "k5"]);
        // A touch arriving later, once the horizon has moved: of the four before it, the
        // newest three stay; what lies after the purchase cannot push them out.
        assert_eq!(s.insert_touch(u, &click("k6", 6), at(5), &R), Inserted::Stored { over_cap: true });
        assert_eq!(ids(&s, "u"), ["k2", "k3", "k4", "k5", "k6"]);
    }

    #[test]
    fn cap_never_holds_more_than_its_limit() {
        let mut s = Shoppers::default();
        let u = s.find_or_insert("u");
        let cap = Cap { max: 3, horizon: 0 };
        let limit = 3 + Cap::HEADROOM;
        for ts in 1..=limit as Millis {
            let over_cap = ts > 3;
            assert_eq!(s.insert_touch(u, &click(&format!("k{ts}"), ts), cap, &R), Inserted::Stored { over_cap });
        }
        assert_eq!(s.live(), limit, "all newer than the horizon: kept");
        s.insert_touch(u, &click("next", limit as Millis + 1), cap, &R);
        assert_eq!(s.live(), limit);
        assert!(!s.has_touch_id(u, "k1") && s.has_touch_id(u, "k2"), "the oldest went first");
    }

    #[test]
    fn expiry_drops_old_touches_and_empty_shoppers() {
        let mut s = Shoppers::default();
        let (u1, u2) = (s.find_or_insert("u1"), s.find_or_insert("u2"));
        s.insert_touch(u1, &click("a", 10), cap(10), &R);
        s.insert_touch(u1, &click("b", 30), cap(10), &R);
        s.insert_touch(u2, &click("c", 20), cap(10), &R);
        s.insert_touch(u1, &click("d", 5), cap(10), &R);
        s.expire(111, &R);
        assert_eq!(ids(&s, "u1"), ["b"]);
        s.expire(125, &R);
        assert_eq!(s.len(), 1);
        s.expire(131, &R);
        assert_eq!((s.len(), s.live(), s.creators.len()), (0, 0, 0));
        // Expired ids are forgotten: the same id may be stored again.
        let u1 = s.find_or_insert("u1");
        assert_eq!(s.insert_touch(u1, &click("a", 140), cap(10), &R), Inserted::Stored { over_cap: false });
    }

    #[test]
    fn many_touches_use_an_index_that_follows_drops() {
        let mut s = Shoppers::default();
        let u = s.find_or_insert("u");
        for i in 0..100 {
            assert_eq!(
                s.insert_touch(u, &click(&format!("k{i}"), i), cap(50), &R),
                Inserted::Stored { over_cap: i >= 50 }
            );
        }
        assert!(s.has_touch_id(u, "k99") && !s.has_touch_id(u, "k10"), "k10 was dropped by the cap");
        assert_eq!(s.insert_touch(u, &click("k10", 200), cap(50), &R), Inserted::Stored { over_cap: true });
        assert_eq!(s.insert_touch(u, &click("k99", 5), cap(50), &R), Inserted::Duplicate);
    }

    #[test]
    fn arena_compaction_keeps_ids() {
        let mut s = Shoppers::default();
        let u = s.find_or_insert("u");
        let long = "x".repeat(200);
        for i in 0..20_000i64 {
            s.insert_touch(u, &click(&format!("{long}{i}"), i), cap(10), &R);
            s.expire(i - 5, &R);
        }
        assert!(s.arena.len() < 1 << 22, "arena compacted: {}", s.arena.len());
        assert_eq!(ids(&s, "u").last().map(String::as_str), Some(format!("{long}19999").as_str()));
        // The id index holds arena offsets: compaction rebuilt it.
        assert!(s.get(u).cold.as_ref().is_some_and(|c| c.id_index.is_some()));
        assert_eq!(s.insert_touch(u, &click(&format!("{long}19998"), 1), cap(10), &R), Inserted::Duplicate);
        assert!(!s.has_touch_id(u, &format!("{long}100")));
    }
}
