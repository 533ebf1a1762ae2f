//! The five consensus channels of one validator on the simulated network (the
//! deterministic tests), registered in `CHANNELS` order with their quotas.

use commonware_p2p::simulated::{Control, Receiver, Sender};
use commonware_runtime::deterministic::Context;
use trellis_node::engine::{CHANNELS, Channels, channel_quota};
use trellis_node_types::PublicKey;

pub type SimChannels = Channels<Sender<PublicKey, Context>, Receiver<PublicKey>>;

pub async fn register(control: &Control<PublicKey, Context>) -> SimChannels {
    let mut pairs = Vec::new();
    for channel in CHANNELS {
        pairs.push(
            control
                .register(channel, channel_quota(channel))
                .await
                .expect("the simulated network is running"),
        );
    }
    Channels::from_pairs(pairs).expect("one pair per channel")
}
