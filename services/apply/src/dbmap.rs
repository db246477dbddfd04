//! Database selection and mapping: which source databases a task copies, and where each
//! one lands on the destination.
//!
//! A task names the source databases to copy (empty means all) and an optional mapping
//! `source db -> destination db`; a database not in the mapping keeps its number. A
//! cluster destination has only database 0, so every selected database must land there.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Why a source database cannot be written to the destination.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DbMapError {
    /// A cluster destination only has database 0.
    #[error(
        "source db {source_db} maps to destination db {target}, but a cluster destination has only db 0 \
         (select only the databases to copy, or map them to 0)"
    )]
    NotInCluster {
        /// Source database.
        source_db: u32,
        /// Where the mapping sends it.
        target: u32,
    },
}

/// The task's database selection and mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbMap {
    /// None: every database is selected.
    selected: Option<BTreeSet<u32>>,
    mapping: BTreeMap<u32, u32>,
    cluster_destination: bool,
}

impl DbMap {
    /// From a task's `databases` and `db_mapping`.
    pub fn new(databases: &[u32], mapping: &HashMap<u32, u32>, cluster_destination: bool) -> Self {
        let selected = (!databases.is_empty()).then(|| databases.iter().copied().collect());
        // Identity entries change nothing; dropping them keeps `identity_all` simple.
        let mapping = mapping
            .iter()
            .filter(|(s, d)| s != d)
            .map(|(s, d)| (*s, *d))
            .collect();
        Self {
            selected,
            mapping,
            cluster_destination,
        }
    }

    /// True when the task copies source database `db`.
    pub fn is_selected(&self, db: u32) -> bool {
        self.selected.as_ref().is_none_or(|s| s.contains(&db))
    }

    /// The destination database of source database `db`, or None when `db` is not copied.
    pub fn target(&self, db: u32) -> Result<Option<u32>, DbMapError> {
        if !self.is_selected(db) {
            return Ok(None);
        }
        let target = self.mapping.get(&db).copied().unwrap_or(db);
        if self.cluster_destination && target != 0 {
            return Err(DbMapError::NotInCluster {
                source_db: db,
                target,
            });
        }
        Ok(Some(target))
    }

    /// True when every database is copied into the database of the same number, so a
    /// source `FLUSHALL` may be replayed as `FLUSHALL`.
    pub fn identity_all(&self) -> bool {
        self.selected.is_none() && self.mapping.is_empty() && !self.cluster_destination
    }

    /// Destination databases that receive some source database, among source databases
    /// `0..databases` (the destination's `databases` setting bounds what can be written).
    pub fn targets(&self, databases: u32) -> BTreeSet<u32> {
        let sources: Vec<u32> = match &self.selected {
            Some(s) => s.iter().copied().collect(),
            None => (0..databases.max(1)).collect(),
        };
        sources
            .into_iter()
            .filter_map(|db| self.target(db).ok().flatten())
            .collect()
    }

    /// True for a cluster destination.
    pub fn cluster_destination(&self) -> bool {
        self.cluster_destination
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_and_mapping() {
        let m = DbMap::new(&[0, 2], &HashMap::from([(2, 5), (0, 0)]), false);
        assert_eq!(m.target(0), Ok(Some(0)));
        assert_eq!(m.target(1), Ok(None));
        assert_eq!(m.target(2), Ok(Some(5)));
        assert!(!m.identity_all());
        assert_eq!(m.targets(16), BTreeSet::from([0, 5]));

        let all = DbMap::new(&[], &HashMap::from([(3, 3)]), false);
        assert!(all.identity_all());
        assert_eq!(all.target(9), Ok(Some(9)));
        assert_eq!(all.targets(4), BTreeSet::from([0, 1, 2, 3]));

        let c = DbMap::new(&[0, 1], &HashMap::from([(1, 0)]), true);
        assert_eq!(c.target(1), Ok(Some(0)));
        assert!(!c.identity_all());
        let bad = DbMap::new(&[], &HashMap::new(), true);
        assert_eq!(bad.target(0), Ok(Some(0)));
        assert!(matches!(
            bad.target(3),
            Err(DbMapError::NotInCluster {
                source_db: 3,
                target: 3
            })
        ));
        assert_eq!(bad.targets(16), BTreeSet::from([0]));
    }
}
