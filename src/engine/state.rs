//! Touch state: each shopper's touches, ordered by `(ts, event_id)`, expired by watermark.
//!
//! Creators and products are interned to `u32`, surfaces reduced to the index of their
//! window override, and a touch's event id lives in its shopper's byte arena, so a stored
//! touch is 24 bytes plus its id's bytes. The hot fields (time, creator, product, kind)
//! sit together, so scanning a shopper's window touches nothing else.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::model::{Millis, Str, Touch, TouchKind};

/// `product` of a storefront touch (one without `product_id`).
pub const STOREFRONT: u32 = u32::MAX;

type Map<K, V> = HashMap<K, V, ahash::RandomState>;

/// A 128-bit hash of an event id: the key of duplicate detection. Stable across runs
/// (snapshots keep it) and wide enough that two different ids never meet in practice.
pub fn id_hash(event_id: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(event_id.as_bytes())
}

const FLAG_CLICK: u8 = 1;
const FLAG_SELF: u8 = 2;

/// A touch as kept in state (24 bytes). Its event id is in the shopper's arena: read it
/// with [`UserTouches::event_id`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredTouch {
    pub ts: Millis,
    /// Interned creator id.
    pub creator: u32,
    /// Interned product id, or [`STOREFRONT`].
    pub product: u32,
    /// Offset of the event id in the shopper's arena.
    id_off: u32,
    /// Index into the engine's window table (0: no override).
    pub surface: u16,
    /// Length of the event id minus one (ids are 1 to 256 bytes).
    id_len_m1: u8,
    /// [`FLAG_CLICK`], [`FLAG_SELF`].
    flags: u8,
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

    fn id_range(&self) -> std::ops::Range<usize> {
        let off = self.id_off as usize;
        off..off + self.id_len_m1 as usize + 1
    }
}

/// Strings to dense `u32` ids and back.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Interner {
    ids: Map<Str, u32>,
    names: Vec<Str>,
}

impl Interner {
    /// The id of `s`, adding it when new.
    pub fn intern(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(s.into());
        self.ids.insert(s.into(), id);
        id
    }

    /// The id of `s`, if known.
    pub fn get(&self, s: &str) -> Option<u32> {
        self.ids.get(s).copied()
    }

    /// The string of an id handed out by [`Interner::intern`].
    pub fn name(&self, id: u32) -> &Str {
        &self.names[id as usize]
    }

    /// How many strings are interned.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// No string interned yet.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// One shopper's touches in `(ts, event_id)` order, and the bytes of their event ids.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct UserTouches {
    touches: VecDeque<StoredTouch>,
    /// Event id bytes; dropped touches leave `garbage` bytes behind until compaction.
    arena: Vec<u8>,
    garbage: u32,
    /// The `ts` this user is queued under in the expiry heap (`Millis::MAX`: not queued).
    queued_at: Millis,
}

impl UserTouches {
    /// The touches, in `(ts, event_id)` order.
    #[inline]
    pub fn touches(&self) -> &VecDeque<StoredTouch> {
        &self.touches
    }

    /// The event id of one of this shopper's touches.
    pub fn event_id(&self, touch: &StoredTouch) -> &str {
        // Ids are copied in from `&str` and sliced at their own boundaries.
        std::str::from_utf8(self.id_bytes(touch)).expect("event ids in the arena are UTF-8")
    }

    #[inline]
    fn id_bytes(&self, touch: &StoredTouch) -> &[u8] {
        &self.arena[touch.id_range()]
    }

    #[inline]
    fn key<'a>(&'a self, touch: &StoredTouch) -> (Millis, &'a [u8]) {
        (touch.ts, self.id_bytes(touch))
    }

    /// Forgets the id bytes of a dropped touch (compacting when half the arena is waste).
    fn drop_id(&mut self, touch: &StoredTouch) {
        self.garbage += touch.id_len_m1 as u32 + 1;
    }

    /// Rewrites the arena without garbage once it is at least half garbage.
    fn maybe_compact(&mut self) {
        let garbage = self.garbage as usize;
        if garbage >= 64 && garbage * 2 >= self.arena.len() {
            self.compact();
        }
    }

    fn compact(&mut self) {
        let garbage = self.garbage as usize;
        let mut arena = Vec::with_capacity(self.arena.len() - garbage);
        for t in self.touches.iter_mut() {
            let range = t.id_range();
            t.id_off = arena.len() as u32;
            arena.extend_from_slice(&self.arena[range]);
        }
        self.arena = arena;
        self.garbage = 0;
    }
}

/// Grows `v` by about half when it is full: less slack than doubling for the many
/// shoppers with a handful of touches, still amortised O(1).
fn reserve_one<T>(v: &mut VecDeque<T>) {
    if v.len() == v.capacity() {
        v.reserve_exact((v.len() / 2).max(2));
    }
}

/// What [`TouchStore::insert`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inserted {
    /// Stored; `evicted` touches of this shopper were dropped to respect the cap.
    Stored { evicted: usize },
    /// A touch with this event id is already stored.
    Duplicate,
}

/// All shoppers' touches.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TouchStore {
    users: Map<Str, UserTouches>,
    /// Min-heap of (oldest touch ts, user); entries whose ts no longer matches the user's
    /// `queued_at` are stale and skipped.
    expiry: BinaryHeap<Reverse<(Millis, Str)>>,
    pub creators: Interner,
    pub products: Interner,
    /// Hashes of the stored touches' event ids.
    ids: HashSet<u128, ahash::RandomState>,
    live: usize,
}

impl TouchStore {
    /// Stores a touch in its shopper's list, keeping at most `cap` touches per shopper
    /// (the oldest go first). `hash` is [`id_hash`] of its event id.
    pub fn insert(&mut self, touch: Touch, hash: u128, surface: u16, cap: usize) -> Inserted {
        debug_assert_eq!(hash, id_hash(&touch.event_id));
        if !self.ids.insert(hash) {
            return Inserted::Duplicate;
        }
        let creator = self.creators.intern(&touch.creator_id);
        let product = touch.product_id.as_deref().map_or(STOREFRONT, |p| self.products.intern(p));
        let is_self = touch.creator_id == touch.user_id;
        let user = match self.users.get_mut(touch.user_id.as_str()) {
            Some(user) => user,
            None => self.users.entry(touch.user_id.clone()).or_insert(UserTouches {
                touches: VecDeque::new(),
                arena: Vec::new(),
                garbage: 0,
                queued_at: Millis::MAX,
            }),
        };
        let id = touch.event_id.as_bytes();
        let key = (touch.ts, id);
        // Touches mostly arrive in time order: check the end before searching.
        let pos = match user.touches.back() {
            Some(last) if user.key(last) < key => user.touches.len(),
            None => 0,
            // Event ids are unique (checked above), so the key is never found.
            _ => user.touches.partition_point(|t| user.key(t) < key),
        };
        if user.arena.len() + id.len() > u32::MAX as usize {
            user.compact(); // 4 GiB of one shopper's ids: only garbage can make room
        }
        if user.arena.capacity() - user.arena.len() < id.len() {
            user.arena.reserve_exact((user.arena.len() / 2).max(id.len()).max(16));
        }
        let stored = StoredTouch {
            ts: touch.ts,
            creator,
            product,
            id_off: u32::try_from(user.arena.len()).expect("a shopper's live event ids fit in 4 GiB"),
            surface,
            id_len_m1: (id.len() - 1) as u8,
            flags: if touch.kind == TouchKind::Click { FLAG_CLICK } else { 0 } | if is_self { FLAG_SELF } else { 0 },
        };
        debug_assert!(!id.is_empty() && id.len() <= 256, "the decoder bounds ids to 1..=256 bytes");
        user.arena.extend_from_slice(id);
        reserve_one(&mut user.touches);
        user.touches.insert(pos, stored);
        self.live += 1;
        let mut evicted = 0;
        while user.touches.len() > cap {
            if let Some(old) = user.touches.pop_front() {
                self.ids.remove(&xxhash_rust::xxh3::xxh3_128(user.id_bytes(&old)));
                user.drop_id(&old);
            }
            evicted += 1;
        }
        if evicted > 0 {
            user.maybe_compact();
        }
        self.live -= evicted;
        if let Some(oldest) = user.touches.front() {
            if oldest.ts < user.queued_at {
                user.queued_at = oldest.ts;
                self.expiry.push(Reverse((oldest.ts, touch.user_id)));
            }
        }
        Inserted::Stored { evicted }
    }

    /// A stored touch has this event id hash.
    pub fn contains_id(&self, hash: u128) -> bool {
        self.ids.contains(&hash)
    }

    /// The shopper's touches.
    pub fn touches_of(&self, user_id: &str) -> Option<&UserTouches> {
        self.users.get(user_id)
    }

    /// Drops every touch with `ts < bound`; returns how many.
    pub fn expire_before(&mut self, bound: Millis) -> usize {
        let mut dropped = 0;
        while let Some(Reverse((ts, _))) = self.expiry.peek() {
            if *ts >= bound {
                break;
            }
            let Some(Reverse((ts, user_id))) = self.expiry.pop() else { break };
            let Some(user) = self.users.get_mut(&user_id) else { continue };
            if user.queued_at != ts {
                continue; // stale entry; the user is queued under another time
            }
            let keep_from = user.touches.partition_point(|t| t.ts < bound);
            for i in 0..keep_from {
                let old = user.touches[i];
                self.ids.remove(&xxhash_rust::xxh3::xxh3_128(user.id_bytes(&old)));
                user.drop_id(&old);
            }
            user.touches.drain(..keep_from);
            dropped += keep_from;
            match user.touches.front() {
                None => {
                    self.users.remove(&user_id);
                }
                Some(oldest) => {
                    user.queued_at = oldest.ts;
                    self.expiry.push(Reverse((oldest.ts, user_id)));
                    user.maybe_compact();
                }
            }
        }
        self.live -= dropped;
        dropped
    }

    /// Touches currently stored.
    pub fn live(&self) -> usize {
        self.live
    }

    /// Shoppers with at least one stored touch.
    pub fn shoppers(&self) -> usize {
        self.users.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn click(id: &str, ts: Millis, user: &str) -> Touch {
        Touch {
            kind: TouchKind::Click,
            event_id: id.into(),
            ts,
            user_id: user.into(),
            creator_id: "c".into(),
            product_id: None,
            surface: None,
        }
    }

    fn ids(s: &TouchStore, user: &str) -> Vec<String> {
        s.touches_of(user).map(|u| u.touches().iter().map(|t| u.event_id(t).to_string()).collect()).unwrap_or_default()
    }

    #[test]
    fn keeps_touch_order_and_detects_duplicates() {
        let mut s = TouchStore::default();
        assert_eq!(s.insert(click("b", 20, "u"), id_hash("b"), 0, 10), Inserted::Stored { evicted: 0 });
        assert_eq!(s.insert(click("a", 10, "u"), id_hash("a"), 0, 10), Inserted::Stored { evicted: 0 });
        assert_eq!(s.insert(click("a2", 20, "u"), id_hash("a2"), 0, 10), Inserted::Stored { evicted: 0 });
        assert_eq!(s.insert(click("a", 10, "u"), id_hash("a"), 0, 10), Inserted::Duplicate);
        // The same id at another time or for another shopper is still a duplicate.
        assert_eq!(s.insert(click("a", 99, "u"), id_hash("a"), 0, 10), Inserted::Duplicate);
        assert_eq!(s.insert(click("b", 20, "u2"), id_hash("b"), 0, 10), Inserted::Duplicate);
        assert_eq!(ids(&s, "u"), ["a", "a2", "b"]);
        assert_eq!(s.live(), 3);
    }

    #[test]
    fn cap_drops_the_oldest() {
        let mut s = TouchStore::default();
        for (i, ts) in [5, 1, 3, 4].into_iter().enumerate() {
            let id = format!("k{i}");
            s.insert(click(&id, ts, "u"), id_hash(&id), 0, 3);
        }
        assert_eq!(ids(&s, "u"), ["k2", "k3", "k0"]);
        assert_eq!(s.live(), 3);
    }

    #[test]
    fn expiry_drops_old_touches_and_empty_shoppers() {
        let mut s = TouchStore::default();
        s.insert(click("a", 10, "u1"), id_hash("a"), 0, 10);
        s.insert(click("b", 30, "u1"), id_hash("b"), 0, 10);
        s.insert(click("c", 20, "u2"), id_hash("c"), 0, 10);
        s.insert(click("d", 5, "u1"), id_hash("d"), 0, 10); // older than the queued entry
        assert_eq!(s.expire_before(11), 2);
        assert_eq!(ids(&s, "u1"), ["b"]);
        assert_eq!(s.expire_before(25), 1);
        assert_eq!(s.shoppers(), 1);
        assert_eq!(s.expire_before(31), 1);
        assert_eq!(s.shoppers(), 0);
        assert_eq!(s.live(), 0);
        // Expired ids are forgotten: the same id may be stored again.
        assert_eq!(s.insert(click("a", 40, "u1"), id_hash("a"), 0, 10), Inserted::Stored { evicted: 0 });
    }
}
