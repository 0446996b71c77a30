//! Touch state: each shopper's touches, ordered by `(ts, event_id)`, expired by watermark.
//!
//! Creators and products are interned to `u32`, surfaces reduced to the index of their
//! window override, so a stored touch is its time, its event id and a few small integers.

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

/// A touch as kept in state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredTouch {
    pub ts: Millis,
    pub event_id: Str,
    /// Interned creator id.
    pub creator: u32,
    /// Interned product id, or [`STOREFRONT`].
    pub product: u32,
    /// Index into the engine's window table (0: no override).
    pub surface: u16,
    pub kind: TouchKind,
    /// The creator is the shopper.
    pub is_self: bool,
}

impl StoredTouch {
    fn key(&self) -> (Millis, &str) {
        (self.ts, self.event_id.as_str())
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

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct UserTouches {
    touches: VecDeque<StoredTouch>,
    /// The `ts` this user is queued under in the expiry heap (`Millis::MAX`: not queued).
    queued_at: Millis,
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
        if !self.users.contains_key(touch.user_id.as_str()) {
            let fresh = UserTouches { touches: VecDeque::new(), queued_at: Millis::MAX };
            self.users.insert(touch.user_id.clone(), fresh);
        }
        let Some(user) = self.users.get_mut(touch.user_id.as_str()) else { unreachable!("inserted above") };
        let key = (touch.ts, touch.event_id.as_str());
        // Touches mostly arrive in time order: check the end before searching.
        let pos = match user.touches.back() {
            Some(last) if last.key() < key => user.touches.len(),
            None => 0,
            // Event ids are unique (checked above), so the key is never found.
            _ => user.touches.partition_point(|t| t.key() < key),
        };
        let stored = StoredTouch {
            ts: touch.ts,
            creator: self.creators.intern(&touch.creator_id),
            product: touch.product_id.as_deref().map_or(STOREFRONT, |p| self.products.intern(p)),
            surface,
            kind: touch.kind,
            is_self: touch.creator_id == touch.user_id,
            event_id: touch.event_id,
        };
        user.touches.insert(pos, stored);
        self.live += 1;
        let mut evicted = 0;
        while user.touches.len() > cap {
            if let Some(old) = user.touches.pop_front() {
                self.ids.remove(&id_hash(&old.event_id));
            }
            evicted += 1;
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

    /// The shopper's touches in `(ts, event_id)` order.
    pub fn touches_of(&self, user_id: &str) -> Option<&VecDeque<StoredTouch>> {
        self.users.get(user_id).map(|u| &u.touches)
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
            for old in user.touches.drain(..keep_from) {
                self.ids.remove(&id_hash(&old.event_id));
            }
            dropped += keep_from;
            match user.touches.front() {
                None => {
                    self.users.remove(&user_id);
                }
                Some(oldest) => {
                    user.queued_at = oldest.ts;
                    self.expiry.push(Reverse((oldest.ts, user_id)));
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
        s.touches_of(user).map(|t| t.iter().map(|t| t.event_id.to_string()).collect()).unwrap_or_default()
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
