//! The revision tree of one document (DESIGN §2).
//!
//! Stored as a flat map from revision to its node (parent link, deleted flag). Merging is a
//! node-wise join, so it is **commutative, associative and idempotent**; the winner depends
//! only on the set of leaves, never on the order revisions arrived in.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::ids::Rev;

/// Default number of generations kept per branch.
pub const DEFAULT_REVS_LIMIT: usize = 1000;

/// One node of a revision tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevNode {
    /// The parent revision, `None` for a root (a first revision, or one whose ancestors were
    /// stemmed away).
    pub parent: Option<Rev>,
    /// Whether this revision is a deletion (a tombstone when it is a leaf).
    pub deleted: bool,
}

/// A leaf of the tree: a revision no other revision names as parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leaf {
    /// The leaf's revision.
    pub rev: Rev,
    /// Whether the leaf is a tombstone.
    pub deleted: bool,
}

/// The winner order: live before deleted, then higher generation, then greater hash.
fn winner_key(leaf: &Leaf) -> (bool, Rev) {
    (!leaf.deleted, leaf.rev)
}

/// The revision tree of one document.
#[derive(Debug, Clone, Default)]
pub struct RevTree {
    nodes: BTreeMap<Rev, RevNode>,
}

impl RevTree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Merges a path: `path[0]` is the newest revision, `path[i + 1]` the parent of `path[i]`,
    /// the last element a root or the oldest ancestor known. `leaf_deleted` is the deleted flag
    /// of `path[0]`. Returns true when the tree changed.
    pub fn merge_path(&mut self, path: &[Rev], leaf_deleted: bool) -> bool {
        let before = self.clone();
        for (i, rev) in path.iter().enumerate() {
            let node = RevNode {
                parent: path.get(i + 1).copied(),
                deleted: i == 0 && leaf_deleted,
            };
            self.join_node(*rev, node);
        }
        *self != before
    }

    /// Joins one node into the tree: a known parent beats an unknown one, two different
    /// parents (only from a corrupt peer) resolve to the greater, and deleted is an OR.
    /// A node naming itself as parent is read as a root. Returns true when the tree changed.
    fn join_node(&mut self, rev: Rev, node: RevNode) -> bool {
        let parent = node.parent.filter(|p| *p != rev);
        match self.nodes.get_mut(&rev) {
            None => {
                self.nodes.insert(
                    rev,
                    RevNode {
                        parent,
                        deleted: node.deleted,
                    },
                );
                true
            }
            Some(old) => {
                let joined = RevNode {
                    parent: match (old.parent, parent) {
                        (Some(a), Some(b)) => Some(a.max(b)),
                        (a, b) => a.or(b),
                    },
                    deleted: old.deleted || node.deleted,
                };
                let changed = joined != *old;
                *old = joined;
                changed
            }
        }
    }

    /// Every revision some node names as its parent.
    fn parents(&self) -> HashSet<Rev> {
        self.nodes.values().filter_map(|n| n.parent).collect()
    }

    /// The leaves, unsorted.
    fn leaf_iter<'a>(&'a self, parents: &'a HashSet<Rev>) -> impl Iterator<Item = Leaf> + 'a {
        self.nodes
            .iter()
            .filter(|(rev, _)| !parents.contains(rev))
            .map(|(rev, node)| Leaf {
                rev: *rev,
                deleted: node.deleted,
            })
    }

    /// Merges every node of `other` into `self`. Returns true when the tree changed.
    pub fn merge(&mut self, other: &RevTree) -> bool {
        let before = self.clone();
        for (rev, node) in &other.nodes {
            self.join_node(*rev, *node);
        }
        *self != before
    }

    /// Keeps at most `limit` generations on every branch, counted from each leaf; never removes
    /// a leaf. Returns the removed revisions.
    ///
    /// As CouchDB does: a revision is kept when it is within `limit` generations of some leaf
    /// (the leaf counts as 1), and a kept revision whose parent was removed becomes a root.
    /// `limit` 0 is read as 1. Stemming is idempotent and keeps the set of leaves. Where
    /// branches share ancestors, a leaf's [`history`](Self::history) can still be longer than
    /// `limit`: an ancestor kept for a short branch also stays an ancestor of a long one.
    pub fn stem(&mut self, limit: usize) -> Vec<Rev> {
        let limit = limit.max(1);
        let parents = self.parents();
        // The largest budget each node was reached with: a walk that reaches a node with no
        // more budget than an earlier walk can stop there (which also ends cycles).
        let mut budget: HashMap<Rev, usize> = HashMap::with_capacity(self.nodes.len());
        let leaves: Vec<Rev> = self.leaf_iter(&parents).map(|l| l.rev).collect();
        for leaf in leaves {
            let mut rev = leaf;
            let mut left = limit;
            loop {
                match budget.get(&rev) {
                    Some(&b) if b >= left => break,
                    _ => {}
                }
                budget.insert(rev, left);
                left -= 1;
                match self.nodes.get(&rev).and_then(|n| n.parent) {
                    Some(p) if left > 0 && self.nodes.contains_key(&p) => rev = p,
                    _ => break,
                }
            }
        }
        let mut removed = Vec::new();
        self.nodes.retain(|rev, _| {
            let keep = budget.contains_key(rev);
            if !keep {
                removed.push(*rev);
            }
            keep
        });
        if !removed.is_empty() {
            let gone: HashSet<Rev> = removed.iter().copied().collect();
            for node in self.nodes.values_mut() {
                if node.parent.is_some_and(|p| gone.contains(&p)) {
                    node.parent = None;
                }
            }
        }
        removed
    }

    /// All leaves, the winner first, then in descending winner order.
    pub fn leaves(&self) -> Vec<Leaf> {
        let parents = self.parents();
        let mut leaves: Vec<Leaf> = self.leaf_iter(&parents).collect();
        leaves.sort_unstable_by_key(|l| Reverse(winner_key(l)));
        leaves
    }

    /// The winning leaf: non-deleted beats deleted, then higher generation, then greater hash.
    pub fn winner(&self) -> Option<Leaf> {
        let parents = self.parents();
        self.leaf_iter(&parents).max_by_key(winner_key)
    }

    /// Live (non-deleted) leaves other than the winner, in descending winner order.
    pub fn conflicts(&self) -> Vec<Rev> {
        self.leaves()
            .into_iter()
            .skip(1)
            .filter(|l| !l.deleted)
            .map(|l| l.rev)
            .collect()
    }

    /// Whether `rev` is a leaf of this tree.
    pub fn is_leaf(&self, rev: &Rev) -> bool {
        self.nodes.contains_key(rev) && !self.nodes.values().any(|n| n.parent == Some(*rev))
    }

    /// The node of `rev`, if the tree holds it.
    pub fn get(&self, rev: &Rev) -> Option<&RevNode> {
        self.nodes.get(rev)
    }

    /// Whether the tree holds `rev`.
    pub fn contains(&self, rev: &Rev) -> bool {
        self.nodes.contains_key(rev)
    }

    /// `rev` and its known ancestors, newest first (empty if `rev` is not in the tree).
    ///
    /// The walk ends at a root or at a parent that is not held (stemmed away); on corrupt data
    /// with a cycle it stops after [`len`](Self::len) revisions.
    pub fn history(&self, rev: &Rev) -> Vec<Rev> {
        let mut out = Vec::new();
        let mut next = self.nodes.get(rev).map(|node| (*rev, node));
        while let Some((rev, node)) = next {
            if out.len() >= self.nodes.len() {
                break;
            }
            out.push(rev);
            next = node.parent.and_then(|p| self.nodes.get(&p).map(|n| (p, n)));
        }
        out
    }

    /// Number of revisions held.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the tree holds no revision.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Every node, in revision order. The deleted flag is reported for leaves only: a history
    /// that arrives as `_revisions` cannot say which ancestors were deletions, so an inner
    /// node's flag depends on the order revisions arrived in and means nothing.
    pub fn iter(&self) -> impl Iterator<Item = (Rev, RevNode)> + '_ {
        let parents = self.parents();
        self.nodes.iter().map(move |(rev, node)| {
            (
                *rev,
                RevNode {
                    parent: node.parent,
                    deleted: node.deleted && !parents.contains(rev),
                },
            )
        })
    }
}

/// Trees are equal when they hold the same revisions with the same parents and the same
/// tombstones among their leaves (inner nodes' deleted flags do not count, see
/// [`RevTree::iter`]).
impl PartialEq for RevTree {
    fn eq(&self, other: &Self) -> bool {
        self.nodes.len() == other.nodes.len() && self.iter().eq(other.iter())
    }
}

impl Eq for RevTree {}

// Serialized as a sequence of `(rev, parent, deleted)` triples: compact in CBOR, and a map
// keyed by a non-string would be awkward for other decoders.
impl Serialize for RevTree {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(
            self.iter()
                .map(|(rev, node)| (rev, node.parent, node.deleted)),
        )
    }
}

impl<'de> Deserialize<'de> for RevTree {
    /// Duplicated revisions are joined as [`RevTree::merge`] would.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let triples: Vec<(Rev, Option<Rev>, bool)> = Deserialize::deserialize(d)?;
        let mut tree = RevTree::new();
        for (rev, parent, deleted) in triples {
            tree.join_node(rev, RevNode { parent, deleted });
        }
        Ok(tree)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    fn r(pos: u64, h: u8) -> Rev {
        Rev::new(pos, [h; 16])
    }

    fn leaf(rev: Rev, deleted: bool) -> Leaf {
        Leaf { rev, deleted }
    }

    fn tree_of(paths: &[(Vec<Rev>, bool)]) -> RevTree {
        let mut t = RevTree::new();
        for (path, deleted) in paths {
            t.merge_path(path, *deleted);
        }
        t
    }

    fn cbor_round_trip(t: &RevTree) -> RevTree {
        let mut bytes = Vec::new();
        ciborium::into_writer(t, &mut bytes).unwrap();
        ciborium::from_reader(&bytes[..]).unwrap()
    }

    #[test]
    fn empty_tree() {
        let mut t = RevTree::new();
        assert!(t.is_empty());
        assert!(!t.merge_path(&[], false));
        assert!(!t.merge_path(&[], true));
        assert!(!t.merge(&RevTree::new()));
        assert_eq!(t.winner(), None);
        assert!(t.leaves().is_empty());
        assert!(t.conflicts().is_empty());
        assert!(t.history(&r(1, 1)).is_empty());
        assert!(!t.is_leaf(&r(1, 1)));
        assert!(t.stem(3).is_empty());
    }

    #[test]
    fn linear_history() {
        let mut t = RevTree::new();
        assert!(t.merge_path(&[r(3, 3), r(2, 2), r(1, 1)], false));
        assert!(!t.merge_path(&[r(3, 3), r(2, 2), r(1, 1)], false));
        assert!(
            !t.merge_path(&[r(2, 2), r(1, 1)], false),
            "a known prefix changes nothing"
        );
        assert_eq!(t.len(), 3);
        assert_eq!(t.leaves(), vec![leaf(r(3, 3), false)]);
        assert_eq!(t.winner(), Some(leaf(r(3, 3), false)));
        assert!(t.conflicts().is_empty());
        assert_eq!(t.history(&r(3, 3)), vec![r(3, 3), r(2, 2), r(1, 1)]);
        assert_eq!(t.history(&r(2, 2)), vec![r(2, 2), r(1, 1)]);
        assert!(t.is_leaf(&r(3, 3)));
        assert!(!t.is_leaf(&r(2, 2)));
        assert!(!t.is_leaf(&r(4, 4)));
        assert_eq!(
            t.get(&r(1, 1)),
            Some(&RevNode {
                parent: None,
                deleted: false
            })
        );
        assert_eq!(
            t.get(&r(2, 2)),
            Some(&RevNode {
                parent: Some(r(1, 1)),
                deleted: false
            })
        );
        // Extending by a path that only names the parent.
        assert!(t.merge_path(&[r(4, 4), r(3, 3)], false));
        assert_eq!(t.winner(), Some(leaf(r(4, 4), false)));
        assert_eq!(
            t.history(&r(4, 4)),
            vec![r(4, 4), r(3, 3), r(2, 2), r(1, 1)]
        );
        assert_eq!(
            t.iter().map(|(rev, _)| rev).collect::<Vec<_>>(),
            vec![r(1, 1), r(2, 2), r(3, 3), r(4, 4)]
        );
    }

    #[test]
    fn winner_and_conflicts() {
        let mut t = RevTree::new();
        t.merge_path(&[r(2, 0xa), r(1, 1)], false);
        t.merge_path(&[r(2, 0xb), r(1, 1)], false);
        t.merge_path(&[r(2, 0x5), r(1, 1)], false);
        // Same generation: the greater hash wins.
        assert_eq!(t.winner(), Some(leaf(r(2, 0xb), false)));
        assert_eq!(t.conflicts(), vec![r(2, 0xa), r(2, 0x5)]);
        // A higher generation beats a greater hash.
        t.merge_path(&[r(3, 0x1), r(2, 0x5)], false);
        assert_eq!(t.winner(), Some(leaf(r(3, 1), false)));
        assert_eq!(t.conflicts(), vec![r(2, 0xb), r(2, 0xa)]);
        // Deleting the winner: a live leaf of lower generation wins.
        t.merge_path(&[r(4, 0xf), r(3, 0x1)], true);
        assert_eq!(t.winner(), Some(leaf(r(2, 0xb), false)));
        assert_eq!(t.conflicts(), vec![r(2, 0xa)]);
        assert_eq!(
            t.leaves(),
            vec![
                leaf(r(2, 0xb), false),
                leaf(r(2, 0xa), false),
                leaf(r(4, 0xf), true)
            ]
        );
        // Deleting every live leaf: the highest tombstone wins and there are no conflicts.
        t.merge_path(&[r(3, 0xc), r(2, 0xb)], true);
        t.merge_path(&[r(3, 0xd), r(2, 0xa)], true);
        assert_eq!(t.winner(), Some(leaf(r(4, 0xf), true)));
        assert!(t.conflicts().is_empty());
        assert_eq!(
            t.leaves(),
            vec![
                leaf(r(4, 0xf), true),
                leaf(r(3, 0xd), true),
                leaf(r(3, 0xc), true)
            ]
        );
        // Re-creating over a tombstone extends it.
        t.merge_path(&[r(5, 0), r(4, 0xf)], false);
        assert_eq!(t.winner(), Some(leaf(r(5, 0), false)));
        assert!(t.get(&r(4, 0xf)).unwrap().deleted);
        assert!(!t.is_leaf(&r(4, 0xf)));
    }

    #[test]
    fn winner_compares_hashes_as_hex_strings() {
        let a = Rev::parse("2-9fffffffffffffffffffffffffffffff").unwrap();
        let b = Rev::parse("2-a0000000000000000000000000000000").unwrap();
        let mut t = RevTree::new();
        t.merge_path(&[a], false);
        t.merge_path(&[b], false);
        assert_eq!(t.winner().unwrap().rev, b);
        assert!(a.to_string() < b.to_string());
    }

    #[test]
    fn node_join_rules() {
        let mut t = RevTree::new();
        // Deleted is an OR, and only the leaf of a path gets the flag.
        t.merge_path(&[r(2, 2), r(1, 1)], false);
        assert!(t.merge_path(&[r(2, 2), r(1, 1)], true));
        assert!(t.get(&r(2, 2)).unwrap().deleted);
        assert!(!t.get(&r(1, 1)).unwrap().deleted);
        assert!(!t.merge_path(&[r(2, 2)], false), "deleted is never undone");
        // A known parent beats an unknown one, whatever the order.
        let mut a = RevTree::new();
        a.merge_path(&[r(3, 3)], false);
        assert_eq!(a.get(&r(3, 3)).unwrap().parent, None);
        assert!(a.merge_path(&[r(3, 3), r(2, 2)], false));
        assert_eq!(a.get(&r(3, 3)).unwrap().parent, Some(r(2, 2)));
        assert!(!a.merge_path(&[r(3, 3)], false));
        assert_eq!(a.get(&r(3, 3)).unwrap().parent, Some(r(2, 2)));
        // Two different parents (a corrupt peer): the greater is kept, in either order.
        assert!(a.merge_path(&[r(3, 3), r(2, 9)], false));
        assert_eq!(a.get(&r(3, 3)).unwrap().parent, Some(r(2, 9)));
        assert!(!a.merge_path(&[r(3, 3), r(2, 2)], false));
        assert_eq!(a.get(&r(3, 3)).unwrap().parent, Some(r(2, 9)));
        // A revision naming itself as parent is a root.
        let mut s = RevTree::new();
        s.merge_path(&[r(1, 1), r(1, 1)], false);
        assert_eq!(s.get(&r(1, 1)).unwrap().parent, None);
        assert!(s.is_leaf(&r(1, 1)));
    }

    #[test]
    fn stem_linear() {
        let path: Vec<Rev> = (1..=5).rev().map(|p| r(p, p as u8)).collect();
        let mut t = tree_of(&[(path.clone(), false)]);
        assert_eq!(t.stem(3), vec![r(1, 1), r(2, 2)]);
        assert_eq!(t.history(&r(5, 5)), vec![r(5, 5), r(4, 4), r(3, 3)]);
        assert_eq!(t.get(&r(3, 3)).unwrap().parent, None);
        assert!(t.stem(3).is_empty());
        // Merging the full path again brings the stemmed revisions back; stemming is not a
        // merge law, it is applied after merging.
        assert!(t.merge_path(&path, false));
        assert_eq!(t.len(), 5);
        // 0 is read as 1: the leaf stays.
        assert_eq!(t.stem(0).len(), 4);
        assert_eq!(t.leaves(), vec![leaf(r(5, 5), false)]);
        assert_eq!(t.get(&r(5, 5)).unwrap().parent, None);
        // A limit above the depth keeps everything.
        let mut t = tree_of(&[(path, false)]);
        assert!(t.stem(DEFAULT_REVS_LIMIT).is_empty());
        assert_eq!(t.len(), 5);
    }

    #[test]
    fn stem_branches() {
        // 1 - 2 - 3a - 4a - 5a
        //       \ 3b
        let mut t = tree_of(&[
            (
                vec![r(5, 0xa), r(4, 0xa), r(3, 0xa), r(2, 2), r(1, 1)],
                false,
            ),
            (vec![r(3, 0xb), r(2, 2)], true),
        ]);
        let mut s = t.clone();
        assert_eq!(s.stem(2), vec![r(1, 1), r(3, 0xa)]);
        assert_eq!(s.history(&r(5, 0xa)), vec![r(5, 0xa), r(4, 0xa)]);
        assert_eq!(s.history(&r(3, 0xb)), vec![r(3, 0xb), r(2, 2)]);
        assert_eq!(s.leaves(), t.leaves());
        // With 3, 2 and 1 are within 3 of 3b, so nothing goes and 5a's history has 5
        // revisions: the CouchDB rule keeps every revision within `limit` of *some* leaf,
        // and an ancestor kept for a short branch stays on the long one's history.
        assert!(t.stem(3).is_empty());
        assert_eq!(
            t.history(&r(5, 0xa)),
            vec![r(5, 0xa), r(4, 0xa), r(3, 0xa), r(2, 2), r(1, 1)]
        );
    }

    #[test]
    fn history_survives_corrupt_cycles() {
        // a -> b -> a, read from corrupt bytes: no leaves, and walks end.
        let triples = vec![
            (r(1, 1), Some(r(2, 2)), false),
            (r(2, 2), Some(r(1, 1)), false),
        ];
        let mut bytes = Vec::new();
        ciborium::into_writer(&triples, &mut bytes).unwrap();
        let mut t: RevTree = ciborium::from_reader(&bytes[..]).unwrap();
        assert_eq!(t.history(&r(1, 1)), vec![r(1, 1), r(2, 2)]);
        assert_eq!(t.winner(), None);
        assert!(!t.is_leaf(&r(1, 1)));
        // A leaf hanging off the cycle.
        t.merge_path(&[r(3, 3), r(2, 2)], false);
        assert_eq!(t.history(&r(3, 3)), vec![r(3, 3), r(2, 2), r(1, 1)]);
        assert_eq!(t.winner(), Some(leaf(r(3, 3), false)));
        assert_eq!(t.stem(10), Vec::<Rev>::new());
        assert_eq!(t.stem(2), vec![r(1, 1)]);
        assert_eq!(t.history(&r(3, 3)), vec![r(3, 3), r(2, 2)]);
    }

    #[test]
    fn serde_round_trip_and_duplicates() {
        let t = tree_of(&[
            (vec![r(3, 3), r(2, 2), r(1, 1)], false),
            (vec![r(2, 7), r(1, 1)], true),
        ]);
        assert_eq!(cbor_round_trip(&t), t);
        assert_eq!(cbor_round_trip(&RevTree::new()), RevTree::new());
        // Duplicates are joined.
        let triples = vec![
            (r(2, 2), None, false),
            (r(2, 2), Some(r(1, 1)), false),
            (r(2, 2), None, true),
            (r(1, 1), None, false),
        ];
        let mut bytes = Vec::new();
        ciborium::into_writer(&triples, &mut bytes).unwrap();
        let back: RevTree = ciborium::from_reader(&bytes[..]).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(
            back.get(&r(2, 2)),
            Some(&RevNode {
                parent: Some(r(1, 1)),
                deleted: true
            })
        );
        // Garbage is an error, not a panic.
        for bad in [
            &[0x81u8, 0x83, 0x82, 0x00, 0x40, 0xf6, 0xf4][..],
            &[0xa0],
            &[0x81],
            &[0xff],
        ] {
            assert!(ciborium::from_reader::<RevTree, _>(bad).is_err());
        }
        // JSON works too (the sequence form has no non-string map keys).
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<RevTree>(&json).unwrap(), t);
    }

    /// A path over a small universe (generations 1..=6, three hashes), so that different
    /// paths share revisions and sometimes disagree on parents.
    fn arb_path() -> impl Strategy<Value = (Vec<Rev>, bool)> {
        (1u64..=6, vec(0u8..3, 6), 1usize..=6, any::<bool>()).prop_map(
            |(top, hashes, len, deleted)| {
                let path = (0..len.min(top as usize))
                    .map(|i| r(top - i as u64, hashes[i]))
                    .collect();
                (path, deleted)
            },
        )
    }

    /// A tree from random paths, sometimes stemmed (so roots with unknown parents occur).
    fn arb_tree() -> impl Strategy<Value = RevTree> {
        (vec(arb_path(), 0..6), prop::option::of(1usize..4)).prop_map(|(paths, limit)| {
            let mut t = tree_of(&paths);
            if let Some(limit) = limit {
                t.stem(limit);
            }
            t
        })
    }

    fn merged(a: &RevTree, b: &RevTree) -> RevTree {
        let mut m = a.clone();
        m.merge(b);
        m
    }

    fn check_leaves(t: &RevTree) -> Result<(), TestCaseError> {
        let leaves = t.leaves();
        let parents: HashSet<Rev> = t.iter().filter_map(|(_, n)| n.parent).collect();
        for (rev, node) in t.iter() {
            let is_leaf = !parents.contains(&rev);
            prop_assert_eq!(t.is_leaf(&rev), is_leaf);
            prop_assert_eq!(leaves.contains(&leaf(rev, node.deleted)), is_leaf);
        }
        for w in leaves.windows(2) {
            prop_assert!(winner_key(&w[0]) > winner_key(&w[1]));
        }
        prop_assert_eq!(t.winner(), leaves.first().copied());
        let live: Vec<Rev> = leaves
            .iter()
            .filter(|l| !l.deleted)
            .map(|l| l.rev)
            .collect();
        if let Some(w) = t.winner() {
            prop_assert_eq!(w.deleted, live.is_empty());
        }
        let expected: Vec<Rev> = live.iter().skip(1).copied().collect();
        prop_assert_eq!(t.conflicts(), expected);
        Ok(())
    }

    proptest! {
        #[test]
        fn merge_is_commutative(a in arb_tree(), b in arb_tree()) {
            prop_assert_eq!(merged(&a, &b), merged(&b, &a));
        }

        #[test]
        fn merge_is_associative(a in arb_tree(), b in arb_tree(), c in arb_tree()) {
            prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
        }

        #[test]
        fn merge_is_idempotent(a in arb_tree(), b in arb_tree()) {
            let mut t = a.clone();
            prop_assert!(!t.merge(&a));
            prop_assert_eq!(&t, &a);
            let ab = merged(&a, &b);
            let mut again = ab.clone();
            prop_assert!(!again.merge(&b));
            prop_assert!(!again.merge(&a));
            prop_assert_eq!(again, ab);
        }

        #[test]
        fn changed_flag_is_exact(a in arb_tree(), b in arb_tree(), p in arb_path()) {
            let mut t = a.clone();
            let changed = t.merge(&b);
            prop_assert_eq!(changed, t != a);
            let before = t.clone();
            let changed = t.merge_path(&p.0, p.1);
            prop_assert_eq!(changed, t != before);
            prop_assert!(!t.merge_path(&p.0, p.1));
        }

        #[test]
        fn merge_order_does_not_matter(
            paths in vec(arb_path(), 0..8).prop_shuffle().prop_flat_map(|p| {
                let shuffled = Just(p.clone()).prop_shuffle();
                (Just(p), shuffled)
            })
        ) {
            let (paths, shuffled) = paths;
            let a = tree_of(&paths);
            let b = tree_of(&shuffled);
            prop_assert_eq!(a.winner(), b.winner());
            prop_assert_eq!(a.leaves(), b.leaves());
            prop_assert_eq!(a.conflicts(), b.conflicts());
            prop_assert_eq!(a, b);
        }

        #[test]
        fn merge_path_equals_merging_its_tree(t in arb_tree(), p in arb_path()) {
            let mut by_path = t.clone();
            let c1 = by_path.merge_path(&p.0, p.1);
            let mut by_tree = t;
            let c2 = by_tree.merge(&tree_of(&[p]));
            prop_assert_eq!(c1, c2);
            prop_assert_eq!(by_path, by_tree);
        }

        #[test]
        fn leaves_winner_conflicts_agree(t in arb_tree()) {
            check_leaves(&t)?;
        }

        #[test]
        fn history_follows_parents(t in arb_tree()) {
            for (rev, _) in t.iter() {
                let h = t.history(&rev);
                prop_assert_eq!(h.first(), Some(&rev));
                for w in h.windows(2) {
                    prop_assert_eq!(t.get(&w[0]).unwrap().parent, Some(w[1]));
                }
                let last = h.last().unwrap();
                prop_assert!(t.get(last).unwrap().parent.is_none_or(|p| !t.contains(&p)));
                let distinct: HashSet<&Rev> = h.iter().collect();
                prop_assert_eq!(distinct.len(), h.len());
            }
        }

        #[test]
        fn stem_keeps_leaves_and_is_idempotent(t in arb_tree(), limit in 0usize..5) {
            let before = t.clone();
            let mut t = t;
            let removed = t.stem(limit);
            prop_assert_eq!(t.len() + removed.len(), before.len());
            prop_assert_eq!(t.leaves(), before.leaves());
            check_leaves(&t)?;
            let limit = limit.max(1);
            for l in before.leaves() {
                // The newest `limit` revisions of every branch stay, linked as before.
                let old = before.history(&l.rev);
                let new = t.history(&l.rev);
                let keep = old.len().min(limit);
                prop_assert_eq!(&new[..keep.min(new.len())], &old[..keep]);
                prop_assert!(new.len() >= keep);
            }
            // Every revision left is within `limit` of some leaf.
            let mut near = HashSet::new();
            for l in t.leaves() {
                near.extend(t.history(&l.rev).into_iter().take(limit));
            }
            prop_assert_eq!(near.len(), t.len());
            prop_assert!(t.len() <= t.leaves().len() * limit);
            for rev in &removed {
                prop_assert!(!t.contains(rev));
                prop_assert!(t.iter().all(|(_, n)| n.parent != Some(*rev)));
            }
            let once = t.clone();
            prop_assert!(t.stem(limit).is_empty());
            prop_assert_eq!(t, once);
        }

        #[test]
        fn stem_bounds_single_branch_history(p in arb_path(), limit in 0usize..8) {
            let mut t = tree_of(std::slice::from_ref(&p));
            t.stem(limit);
            let h = t.history(&p.0[0]);
            prop_assert_eq!(h.len(), p.0.len().min(limit.max(1)));
            prop_assert_eq!(&h[..], &p.0[..h.len()]);
        }

        #[test]
        fn serde_round_trips(t in arb_tree()) {
            prop_assert_eq!(cbor_round_trip(&t), t);
        }
    }
}
