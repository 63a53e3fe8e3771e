//! Parsing of core lists: `0`, `0,1`, `0-3,6`, or an SPDK-style hex mask such as `0x3`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// The CPUs a set of reactors runs on, in ascending order, without duplicates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoreList(Vec<usize>);

/// Why a core list could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CoreListError {
    #[error("core list is empty")]
    Empty,
    #[error("core list: `{0}` is not a core id, a range `A-B` or a hex mask `0x..`")]
    Syntax(String),
    #[error("core list: range `{0}` runs backwards")]
    Backwards(String),
    #[error("core list: core {0} is above the supported maximum of 1023")]
    TooLarge(usize),
}

impl CoreList {
    /// A list from explicit CPU ids (sorted and deduplicated).
    pub fn new(mut cpus: Vec<usize>) -> Result<Self, CoreListError> {
        cpus.sort_unstable();
        cpus.dedup();
        if cpus.is_empty() {
            return Err(CoreListError::Empty);
        }
        if let Some(&c) = cpus.iter().find(|&&c| c > 1023) {
            return Err(CoreListError::TooLarge(c));
        }
        Ok(CoreList(cpus))
    }

    /// The first `n` CPUs: `0..n`.
    pub fn first(n: usize) -> Self {
        CoreList((0..n.max(1)).collect())
    }

    /// The CPU ids, ascending.
    pub fn cpus(&self) -> &[usize] {
        &self.0
    }

    /// Number of cores.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true: a core list holds at least one core.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The SPDK-style mask, e.g. `0x3`.
    pub fn to_mask(&self) -> String {
        let mut words = vec![0u64; self.0.iter().max().map_or(1, |m| m / 64 + 1)];
        for &c in &self.0 {
            words[c / 64] |= 1 << (c % 64);
        }
        let mut s = String::from("0x");
        let mut started = false;
        for (i, w) in words.iter().enumerate().rev() {
            if !started {
                if *w == 0 && i > 0 {
                    continue;
                }
                s.push_str(&format!("{w:x}"));
                started = true;
            } else {
                s.push_str(&format!("{w:016x}"));
            }
        }
        s
    }
}

impl FromStr for CoreList {
    type Err = CoreListError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim().trim_start_matches('[').trim_end_matches(']');
        if s.is_empty() {
            return Err(CoreListError::Empty);
        }
        if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            let mut cpus = Vec::new();
            for (i, ch) in hex.chars().rev().enumerate() {
                let v = ch
                    .to_digit(16)
                    .ok_or_else(|| CoreListError::Syntax(s.to_string()))?;
                for bit in 0..4 {
                    if v & (1 << bit) != 0 {
                        cpus.push(i * 4 + bit);
                    }
                }
            }
            return CoreList::new(cpus);
        }
        let mut cpus = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let num = |t: &str| {
                t.trim()
                    .parse::<usize>()
                    .map_err(|_| CoreListError::Syntax(part.to_string()))
            };
            match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (num(a)?, num(b)?);
                    if b < a {
                        return Err(CoreListError::Backwards(part.to_string()));
                    }
                    if b > 1023 {
                        return Err(CoreListError::TooLarge(b));
                    }
                    cpus.extend(a..=b);
                }
                None => cpus.push(num(part)?),
            }
        }
        CoreList::new(cpus)
    }
}

impl fmt::Display for CoreList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|c| c.to_string()).collect();
        f.write_str(&parts.join(","))
    }
}

impl Serialize for CoreList {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter())
    }
}

impl<'de> Deserialize<'de> for CoreList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            List(Vec<usize>),
            Text(String),
            One(usize),
        }
        match Repr::deserialize(d)? {
            Repr::List(v) => CoreList::new(v).map_err(serde::de::Error::custom),
            Repr::Text(t) => t.parse().map_err(serde::de::Error::custom),
            Repr::One(c) => CoreList::new(vec![c]).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_ranges_and_masks() {
        assert_eq!("0".parse::<CoreList>().unwrap().cpus(), &[0]);
        assert_eq!("1,0".parse::<CoreList>().unwrap().cpus(), &[0, 1]);
        assert_eq!("0-2,5".parse::<CoreList>().unwrap().cpus(), &[0, 1, 2, 5]);
        assert_eq!("0x3".parse::<CoreList>().unwrap().cpus(), &[0, 1]);
        assert_eq!("0x10".parse::<CoreList>().unwrap().cpus(), &[4]);
        assert_eq!("[0,1]".parse::<CoreList>().unwrap().cpus(), &[0, 1]);
    }

    #[test]
    fn rejects_bad_lists_precisely() {
        assert_eq!("".parse::<CoreList>(), Err(CoreListError::Empty));
        assert_eq!("0x0".parse::<CoreList>(), Err(CoreListError::Empty));
        assert_eq!(
            "a".parse::<CoreList>(),
            Err(CoreListError::Syntax("a".into()))
        );
        assert_eq!(
            "3-1".parse::<CoreList>(),
            Err(CoreListError::Backwards("3-1".into()))
        );
        assert_eq!(
            "0xg".parse::<CoreList>().unwrap_err().to_string(),
            "core list: `0xg` is not a core id, a range `A-B` or a hex mask `0x..`"
        );
        assert_eq!(
            "5000".parse::<CoreList>(),
            Err(CoreListError::TooLarge(5000))
        );
    }

    #[test]
    fn mask_round_trips() {
        for s in ["0x1", "0x3", "0x10", "0x8000000000000001"] {
            let l: CoreList = s.parse().unwrap();
            assert_eq!(l.to_mask(), s);
        }
        let l: CoreList = "64".parse().unwrap();
        assert_eq!(l.to_mask(), "0x10000000000000000");
        assert_eq!(l.to_mask().parse::<CoreList>().unwrap(), l);
    }
}
