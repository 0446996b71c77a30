//! Strings to dense `u32` ids and back, with reference counts: an id whose last user
//! (a stored touch, a ledger credit) is gone is released and its slot reused, so the
//! table follows the live state instead of growing for ever.

use hashbrown::HashTable;

use crate::model::Str;

/// The hasher of every engine table: a fixed seed, so runs are repeatable (the order of
/// hash tables never reaches the output either way, and no hash is stored in a
/// checkpoint). foldhash rather than ahash, which without AES-NI (a portable build does
/// not get it) takes its slower fallback: replay ran 1 % fewer instructions (BENCHMARKS,
/// issue 10).
pub(crate) fn hash_bytes(bytes: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    const SEED: foldhash::fast::FixedState = foldhash::fast::FixedState::with_seed(0x243f_6a88_85a3_08d3);
    SEED.hash_one(bytes)
}

#[derive(Clone, Debug)]
struct Entry {
    name: Str,
    /// Users of this id; 0 for a free slot.
    refs: u32,
}

/// A reference-counted interner.
#[derive(Clone, Debug, Default)]
pub struct Interner {
    /// Ids, found by the hash of their name.
    index: HashTable<u32>,
    entries: Vec<Entry>,
    free: Vec<u32>,
}

impl Interner {
    /// The id of `s` with one more reference, adding it when new.
    pub fn acquire(&mut self, s: &str) -> u32 {
        let hash = hash_bytes(s.as_bytes());
        let entries = &self.entries;
        if let Some(&id) = self.index.find(hash, |&id| entries[id as usize].name == s) {
            self.entries[id as usize].refs += 1;
            return id;
        }
        let id = match self.free.pop() {
            Some(id) => {
                self.entries[id as usize] = Entry { name: s.into(), refs: 1 };
                id
            }
            None => {
                self.entries.push(Entry { name: s.into(), refs: 1 });
                (self.entries.len() - 1) as u32
            }
        };
        let entries = &self.entries;
        self.index.insert_unique(hash, id, |&id| hash_bytes(entries[id as usize].name.as_bytes()));
        id
    }

    /// One more reference to an id handed out by [`Interner::acquire`].
    pub fn retain(&mut self, id: u32) {
        self.entries[id as usize].refs += 1;
    }

    /// One reference fewer; the last one frees the id.
    pub fn release(&mut self, id: u32) {
        let e = &mut self.entries[id as usize];
        debug_assert!(e.refs > 0, "released an id with no references");
        e.refs -= 1;
        if e.refs == 0 {
            let hash = hash_bytes(e.name.as_bytes());
            if let Ok(found) = self.index.find_entry(hash, |&x| x == id) {
                found.remove();
            }
            self.entries[id as usize].name = Str::default();
            self.free.push(id);
        }
    }

    /// The id of `s`, if it is in use.
    pub fn get(&self, s: &str) -> Option<u32> {
        let entries = &self.entries;
        self.index.find(hash_bytes(s.as_bytes()), |&id| entries[id as usize].name == s).copied()
    }

    /// The string of a live id.
    pub fn name(&self, id: u32) -> &str {
        &self.entries[id as usize].name
    }

    /// Ids in use.
    pub fn len(&self) -> usize {
        self.entries.len() - self.free.len()
    }

    /// No id in use.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_shared_counted_and_reused() {
        let mut i = Interner::default();
        let a = i.acquire("a");
        let b = i.acquire("b");
        assert_eq!(i.acquire("a"), a);
        assert_eq!((i.name(a), i.name(b), i.len()), ("a", "b", 2));
        i.release(a);
        assert_eq!(i.get("a"), Some(a), "one reference left");
        i.release(a);
        assert_eq!(i.get("a"), None);
        assert_eq!(i.len(), 1);
        let c = i.acquire("c");
        assert_eq!(c, a, "the freed slot is reused");
        assert_eq!(i.get("c"), Some(c));
        assert_eq!(i.get("b"), Some(b));
        i.retain(b);
        i.release(b);
        assert_eq!(i.get("b"), Some(b));
    }
}
