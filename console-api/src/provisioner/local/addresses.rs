//! Loopback addresses for local nodes: every node gets its own `127.x.y.z`, so its p2p
//! and RPC ports are the same fixed pair on every node and nothing has to hunt for free
//! ports. Addresses in use are read from the durable network records, so two networks
//! never share one, before or after a console restart.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// The p2p port of every local node (on its own address).
pub const P2P_PORT: u16 = 30_300;
/// The JSON-RPC / probes / metrics port of every local node.
pub const RPC_PORT: u16 = 30_545;

/// An inclusive range of loopback addresses, written as a CIDR block
/// (`127.0.2.0/24`: its network and broadcast addresses are left out) or as
/// `FIRST-LAST` (`127.0.2.1-127.0.9.254`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressRange {
    first: u32,
    last: u32,
}

impl AddressRange {
    pub fn new(first: Ipv4Addr, last: Ipv4Addr) -> Result<Self, String> {
        let (first, last) = (u32::from(first), u32::from(last));
        if first > last {
            return Err("the first address is above the last".into());
        }
        for address in [first, last] {
            if !Ipv4Addr::from(address).is_loopback() {
                return Err(format!(
                    "{} is not a loopback address (127.0.0.0/8)",
                    Ipv4Addr::from(address)
                ));
            }
        }
        Ok(Self { first, last })
    }

    pub fn len(&self) -> u64 {
        u64::from(self.last - self.first) + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn contains(&self, address: Ipv4Addr) -> bool {
        (self.first..=self.last).contains(&u32::from(address))
    }

    /// The `count` lowest addresses of the range that are neither `used` nor refused by
    /// `is_free` (a bind probe: something else may be listening there).
    pub fn allocate(
        &self,
        used: &BTreeSet<Ipv4Addr>,
        count: usize,
        mut is_free: impl FnMut(Ipv4Addr) -> bool,
    ) -> Result<Vec<Ipv4Addr>, String> {
        let mut out = Vec::with_capacity(count);
        for raw in self.first..=self.last {
            if out.len() == count {
                break;
            }
            let address = Ipv4Addr::from(raw);
            if !used.contains(&address) && is_free(address) {
                out.push(address);
            }
        }
        if out.len() < count {
            return Err(format!(
                "the local address range {self} has {} free addresses, {count} are needed; \
                 delete networks or start the console with a larger --local-addresses range",
                out.len()
            ));
        }
        Ok(out)
    }
}

impl fmt::Display for AddressRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}-{}",
            Ipv4Addr::from(self.first),
            Ipv4Addr::from(self.last)
        )
    }
}

impl FromStr for AddressRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let parse = |s: &str| {
            Ipv4Addr::from_str(s.trim()).map_err(|_| format!("{s:?} is not an IPv4 address"))
        };
        if let Some((base, bits)) = text.split_once('/') {
            let bits: u32 = bits
                .trim()
                .parse()
                .ok()
                .filter(|b| (8..=30).contains(b))
                .ok_or_else(|| format!("prefix length in {text:?} must be 8..=30"))?;
            let base = u32::from(parse(base)?);
            let mask = u32::MAX << (32 - bits);
            if base & !mask != 0 {
                return Err(format!(
                    "{text:?} has host bits set; write the block's first address"
                ));
            }
            // Leave out the block's network and broadcast addresses.
            return Self::new(Ipv4Addr::from(base + 1), Ipv4Addr::from((base | !mask) - 1));
        }
        if let Some((first, last)) = text.split_once('-') {
            return Self::new(parse(first)?, parse(last)?);
        }
        Err(format!(
            "{text:?} is neither a CIDR block (127.0.2.0/24) nor a range \
             (127.0.2.1-127.0.2.254)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_strictly() {
        let r: AddressRange = "127.0.2.0/24".parse().unwrap();
        assert_eq!(r.to_string(), "127.0.2.1-127.0.2.254");
        assert_eq!(r.len(), 254);
        let r: AddressRange = "127.0.2.1-127.0.9.254".parse().unwrap();
        assert!(r.contains("127.0.5.7".parse().unwrap()));
        assert!(!r.contains("127.0.10.1".parse().unwrap()));
        for bad in [
            "10.0.0.0/24",
            "127.0.2.1/24",
            "127.0.2.0/4",
            "127.0.2.9-127.0.2.1",
            "localhost",
            "127.0.2.0/x",
        ] {
            assert!(bad.parse::<AddressRange>().is_err(), "{bad}");
        }
    }

    #[test]
    fn allocation_skips_used_and_busy_addresses_and_says_when_full() {
        let r: AddressRange = "127.0.2.0/29".parse().unwrap(); // .1 ..= .6
        let used = BTreeSet::from(["127.0.2.1".parse().unwrap()]);
        let busy: Ipv4Addr = "127.0.2.2".parse().unwrap();
        let got = r.allocate(&used, 2, |a| a != busy).unwrap();
        assert_eq!(
            got,
            [
                "127.0.2.3".parse::<Ipv4Addr>().unwrap(),
                "127.0.2.4".parse().unwrap()
            ]
        );
        let err = r.allocate(&used, 6, |_| true).unwrap_err();
        assert!(err.contains("5 free addresses, 6 are needed"), "{err}");
    }
}
