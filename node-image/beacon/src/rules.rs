//! Who may sign what, and what each system transaction needs of the beacon state:
//! [`BeaconState::check`] (submission) and [`BeaconState::execute`] (finalized block).

use crate::{
    BeaconState, MAX_VALIDATORS, Mode, PendingCount, SystemRefusal, Validator, committee, hex,
};
use std::collections::BTreeMap;
use trellis_node_types::system::{ANY_SHARD, MAX_ADDRESS_LEN, SystemAction};
use trellis_node_types::{PublicKey, SystemError, SystemTx};

/// Accepts `host:port` with a non-empty host and a port 1..=65535.
pub(crate) fn check_address(what: &'static str, address: &str) -> Result<(), SystemRefusal> {
    let valid = address.len() <= MAX_ADDRESS_LEN
        && !address.chars().any(|c| c.is_control() || c.is_whitespace())
        && address.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
    if valid {
        Ok(())
    } else {
        Err(SystemRefusal::BadAddress {
            what,
            address: address.to_string(),
        })
    }
}

impl BeaconState {
    /// Shards of `count` that `registry` would leave without validators next epoch.
    fn empty_shards(&self, registry: &BTreeMap<PublicKey, Validator>, count: u16) -> Vec<u16> {
        committee::assign(
            self.mode,
            count,
            registry,
            &self.current_keys(),
            &self.seed,
            &self.member_names(),
        )
        .iter()
        .enumerate()
        .filter(|(_, c)| c.is_empty())
        // < count ≤ 256.
        .map(|(s, _)| s as u16)
        .collect()
    }

    /// Refuses a registry change that would leave a shard (of this epoch's count or the
    /// pending one) without validators that it has now.
    fn keeps_shards_staffed(
        &self,
        registry: &BTreeMap<PublicKey, Validator>,
    ) -> Result<(), SystemRefusal> {
        let counts = [
            Some(self.shard_count),
            self.pending.as_ref().map(|p| p.count),
        ];
        for count in counts.into_iter().flatten() {
            let before = self.empty_shards(&self.validators, count);
            if let Some(&shard) = self
                .empty_shards(registry, count)
                .iter()
                .find(|s| !before.contains(s))
            {
                return Err(SystemRefusal::EmptyShard { shard });
            }
        }
        Ok(())
    }

    /// The name of the member whose admin key is `key`.
    fn member_of(&self, key: &PublicKey) -> Option<&String> {
        self.members
            .iter()
            .find(|(_, admin)| *admin == key)
            .map(|(name, _)| name)
    }

    /// Chain, signature, signer and sequence: what must hold before a transaction may
    /// touch state at all.
    fn authorize(&self, tx: &SystemTx) -> Result<(), SystemRefusal> {
        tx.check_stateless(&self.chain_id).map_err(|e| match e {
            SystemError::WrongChain { expected, got } => {
                SystemRefusal::WrongChain { expected, got }
            }
            SystemError::BadSignature(k) => SystemRefusal::BadSignature(k),
            // check_stateless only reports the two above.
            other => SystemRefusal::BadSignature(other.to_string()),
        })?;
        let signer = &tx.signer;
        let action = tx.payload.action.name();
        match &tx.payload.action {
            SystemAction::SetShardCount { .. } => {
                if *signer != self.admin_key {
                    return Err(SystemRefusal::WrongSigner {
                        action,
                        required: format!("the network admin key {}", hex(&self.admin_key)),
                        signer: hex(signer),
                    });
                }
            }
            SystemAction::RegisterValidator { node_key, .. }
            | SystemAction::DeregisterValidator { node_key } => match self.mode {
                Mode::Public => {
                    if signer != node_key && *signer != self.admin_key {
                        return Err(SystemRefusal::WrongSigner {
                            action,
                            required: format!(
                                "the node key {} itself or the network admin key {}",
                                hex(node_key),
                                hex(&self.admin_key)
                            ),
                            signer: hex(signer),
                        });
                    }
                }
                Mode::Consortium => {
                    let Some(member) = self.member_of(signer) else {
                        return Err(SystemRefusal::NotMember(hex(signer)));
                    };
                    if let Some(owner) = self
                        .validators
                        .get(node_key)
                        .and_then(|v| v.member.as_ref())
                        && owner != member
                    {
                        return Err(SystemRefusal::NotOwner {
                            key: hex(node_key),
                            owner: owner.clone(),
                        });
                    }
                }
            },
        }
        let expected = self.next_sequence(signer);
        let got = tx.payload.sequence;
        if got < expected {
            return Err(SystemRefusal::StaleSequence {
                signer: hex(signer),
                got,
                expected,
            });
        }
        if got > expected {
            return Err(SystemRefusal::FutureSequence {
                signer: hex(signer),
                got,
                expected,
            });
        }
        Ok(())
    }

    /// What the action needs of the state; returns the registry after it, if it
    /// changes the registry.
    fn check_action(
        &self,
        tx: &SystemTx,
    ) -> Result<Option<BTreeMap<PublicKey, Validator>>, SystemRefusal> {
        match &tx.payload.action {
            SystemAction::SetShardCount { count, .. } => {
                let count = *count;
                if count == 0 || count > self.max_shards {
                    return Err(SystemRefusal::CountOutOfRange {
                        count,
                        max_shards: self.max_shards,
                    });
                }
                if let Some(p) = &self.pending {
                    return Err(SystemRefusal::ChangePending {
                        count: p.count,
                        height: self.next_epoch_height(),
                    });
                }
                if self.resharding_epoch == Some(self.epoch) {
                    return Err(SystemRefusal::Resharding {
                        epoch: self.epoch,
                        until: self.next_epoch_height(),
                    });
                }
                if count == self.shard_count {
                    return Err(SystemRefusal::SameCount(count));
                }
                if let Some(&shard) = self.empty_shards(&self.validators, count).first() {
                    return Err(SystemRefusal::EmptyShard { shard });
                }
                Ok(None)
            }
            SystemAction::RegisterValidator {
                shard,
                node_key,
                p2p_address,
                rpc_address,
            } => {
                if *shard != ANY_SHARD && *shard >= self.max_shards {
                    return Err(SystemRefusal::ShardOutOfRange {
                        shard: *shard,
                        max_shards: self.max_shards,
                    });
                }
                check_address("p2p address", p2p_address)?;
                check_address("rpc address", rpc_address)?;
                if self.beacon.iter().any(|s| s.node_key == *node_key) {
                    return Err(SystemRefusal::BeaconValidator(hex(node_key)));
                }
                let member = match self.mode {
                    Mode::Public => None,
                    Mode::Consortium => self.member_of(&tx.signer).cloned(),
                };
                let validator = Validator {
                    node_key: node_key.clone(),
                    shard: *shard,
                    p2p_address: p2p_address.clone(),
                    rpc_address: rpc_address.clone(),
                    member,
                };
                match self.validators.get(node_key) {
                    Some(v) if *v == validator => {
                        return Err(SystemRefusal::Unchanged(hex(node_key)));
                    }
                    None if self.validators.len() >= MAX_VALIDATORS => {
                        return Err(SystemRefusal::TooManyValidators {
                            max: MAX_VALIDATORS,
                        });
                    }
                    _ => {}
                }
                let mut registry = self.validators.clone();
                registry.insert(node_key.clone(), validator);
                self.keeps_shards_staffed(&registry)?;
                Ok(Some(registry))
            }
            SystemAction::DeregisterValidator { node_key } => {
                if !self.validators.contains_key(node_key) {
                    return Err(SystemRefusal::UnknownValidator(hex(node_key)));
                }
                let mut registry = self.validators.clone();
                registry.remove(node_key);
                self.keeps_shards_staffed(&registry)?;
                Ok(Some(registry))
            }
        }
    }

    /// Whether `tx` would execute successfully now (submission check).
    pub fn check(&self, tx: &SystemTx) -> Result<(), SystemRefusal> {
        self.authorize(tx)?;
        self.check_action(tx).map(|_| ())
    }

    /// Executes `tx` of the finalized beacon block at `height`. On a refusal with
    /// [`SystemRefusal::consumes_sequence`] the signer's sequence still moves on (the
    /// receipt records the failure); any other refusal changes nothing.
    pub fn execute(&mut self, tx: &SystemTx, height: u64) -> Result<(), SystemRefusal> {
        self.authorize(tx)?;
        let outcome = self.check_action(tx);
        let next = tx.payload.sequence.saturating_add(1);
        self.sequences.insert(tx.signer.clone(), next);
        match (outcome?, &tx.payload.action) {
            (Some(registry), _) => self.validators = registry,
            (None, SystemAction::SetShardCount { count, load }) => {
                self.pending = Some(PendingCount {
                    count: *count,
                    load: load.clone(),
                    height,
                });
            }
            (None, _) => {}
        }
        Ok(())
    }
}
