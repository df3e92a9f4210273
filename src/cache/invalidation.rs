//! Keeping every instance's L1 honest: each write or applied event announces its new values on a Redis
//! pub/sub channel; every instance applies them to its L1 (newer versions win). While this instance is
//! not subscribed (Redis down, connection lost, or its own heartbeat not coming back), its L1 is
//! suspended and emptied: it could be missing announcements.

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use futures::StreamExt;
use tokio::sync::watch;

use super::{
    Caches,
    keys::{self, KeyNames},
    l1::Versioned,
};
use crate::{
    redis_pool::{RedisTarget, redis},
    telemetry::metrics::CACHE_INVALIDATIONS,
};

/// One announcement; a message carries one per line.
#[derive(Clone, Debug, PartialEq)]
pub enum Announcement {
    Status {
        follower: i64,
        followee: i64,
        version: i64,
        follows: bool,
    },
    Counts {
        user: i64,
        version: i64,
        followers: i64,
        following: i64,
    },
    User {
        user: i64,
        version: i64,
        payload: String,
    },
    ListVersion {
        kind: crate::db::follows::ListKind,
        owner: i64,
        version: i64,
    },
    DropCounts {
        user: i64,
    },
    /// A following set that could not be changed in place: reload it when next asked.
    DropSet {
        user: i64,
    },
    /// The entries below: a write that could not reach Redis left them stale on other instances.
    DropUser {
        user: i64,
    },
    DropStatus {
        follower: i64,
        followee: i64,
    },
    DropListVersion {
        kind: crate::db::follows::ListKind,
        owner: i64,
    },
    Heartbeat {
        instance: String,
        beat: u64,
    },
}

impl Announcement {
    pub fn encode(&self) -> String {
        match self {
            Self::Status {
                follower,
                followee,
                version,
                follows,
            } => {
                format!(
                    "s {follower} {followee} {version} {}",
                    keys::encode_status(*follows)
                )
            }
            Self::Counts {
                user,
                version,
                followers,
                following,
            } => format!("c {user} {version} {followers} {following}"),
            Self::User {
                user,
                version,
                payload,
            } => format!("u {user} {version} {payload}"),
            Self::ListVersion {
                kind,
                owner,
                version,
            } => format!("l {} {owner} {version}", keys::kind_tag(*kind)),
            Self::DropCounts { user } => format!("dc {user}"),
            Self::DropSet { user } => format!("ds {user}"),
            Self::DropUser { user } => format!("du {user}"),
            Self::DropStatus { follower, followee } => format!("dst {follower} {followee}"),
            Self::DropListVersion { kind, owner } => {
                format!("dl {} {owner}", keys::kind_tag(*kind))
            }
            Self::Heartbeat { instance, beat } => format!("hb {instance} {beat}"),
        }
    }

    pub fn decode(line: &str) -> Option<Self> {
        if let Some(rest) = line.strip_prefix("u ") {
            // The payload (JSON) may hold spaces: it is everything after the version.
            let mut parts = rest.splitn(3, ' ');
            let user = parts.next()?.parse().ok()?;
            let version = parts.next()?.parse().ok()?;
            return Some(Self::User {
                user,
                version,
                payload: parts.next()?.to_owned(),
            });
        }
        let mut parts = line.split(' ');
        let tag = parts.next()?;
        if tag == "l" {
            let kind = keys::kind_from_tag(parts.next()?)?;
            return Some(Self::ListVersion {
                kind,
                owner: parts.next()?.parse().ok()?,
                version: parts.next()?.parse().ok()?,
            });
        }
        if tag == "dl" {
            return Some(Self::DropListVersion {
                kind: keys::kind_from_tag(parts.next()?)?,
                owner: parts.next()?.parse().ok()?,
            });
        }
        if tag == "hb" {
            return Some(Self::Heartbeat {
                instance: parts.next()?.to_owned(),
                beat: parts.next()?.parse().ok()?,
            });
        }
        let numbers: Vec<i64> = parts.map(|p| p.parse().ok()).collect::<Option<_>>()?;
        Some(match (tag, numbers.as_slice()) {
            ("s", &[follower, followee, version, follows]) => Self::Status {
                follower,
                followee,
                version,
                follows: follows == 1,
            },
            ("c", &[user, version, followers, following]) => Self::Counts {
                user,
                version,
                followers,
                following,
            },
            ("dc", &[user]) => Self::DropCounts { user },
            ("ds", &[user]) => Self::DropSet { user },
            ("du", &[user]) => Self::DropUser { user },
            ("dst", &[follower, followee]) => Self::DropStatus { follower, followee },
            _ => return None,
        })
    }
}

/// Joins announcements into one message.
pub fn message(announcements: &[Announcement]) -> String {
    announcements
        .iter()
        .map(Announcement::encode)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first line of a message that names the instance that sent it (a receiver that does not know
/// the line skips it, as any unknown line).
const ORIGIN: &str = "from ";

/// A message of announcements the sender has applied to its own L1 already: it names the sender, whose
/// subscriber skips it.
pub fn from_origin(origin: &str, announcements: &[Announcement]) -> String {
    format!("{ORIGIN}{origin}\n{}", message(announcements))
}

/// Whether a message was sent, already applied, by the instance named `origin`.
fn sent_by(payload: &str, origin: &str) -> bool {
    payload
        .lines()
        .next()
        .and_then(|line| line.strip_prefix(ORIGIN))
        .is_some_and(|from| from == origin)
}

/// The announcement that drops, on every instance, the L1 entries of these deleted dirty keys, one
/// line per entry (a failed write dirties a pair's status, set and recent changes together). Their
/// changes reached no other instance (a renamed user, say, has no event for the consumer to repair it).
pub(super) fn drops_of(names: &KeyNames, keys: &[String]) -> Option<(String, String)> {
    let mut lines: Vec<String> = keys
        .iter()
        .filter_map(|key| {
            let drop = match names.parse(key)? {
                keys::Named::Status { follower, followee } => {
                    Announcement::DropStatus { follower, followee }
                }
                keys::Named::Counts { user } => Announcement::DropCounts { user },
                keys::Named::User { user } => Announcement::DropUser { user },
                keys::Named::ListVersion { kind, owner } => {
                    Announcement::DropListVersion { kind, owner }
                }
                keys::Named::FollowingSet { user } | keys::Named::RecentChanges { user } => {
                    Announcement::DropSet { user }
                }
            };
            Some(drop.encode())
        })
        .collect();
    lines.sort_unstable();
    lines.dedup();
    (!lines.is_empty()).then(|| (names.channel(), lines.join("\n")))
}

impl Caches {
    /// Applies one announcement to this instance's L1.
    pub fn apply(&self, announcement: Announcement) {
        let kind = match announcement {
            Announcement::Status {
                follower,
                followee,
                version,
                follows,
            } => {
                self.sets.change(follower, followee, version, follows);
                self.status.put_if_newer(
                    (follower, followee),
                    Versioned {
                        version,
                        value: follows,
                    },
                );
                "status"
            }
            Announcement::Counts {
                user,
                version,
                followers,
                following,
            } => {
                let counts = crate::domain::Counts {
                    user_id: crate::domain::UserId(user),
                    follower_count: followers,
                    following_count: following,
                    version,
                };
                self.counts.put_if_newer(
                    user,
                    Versioned {
                        version,
                        value: counts,
                    },
                );
                "counts"
            }
            Announcement::User {
                user,
                version,
                payload,
            } => {
                match keys::decode_user(&payload) {
                    Some(record) => self.users.put_if_newer(
                        user,
                        Versioned {
                            version,
                            value: record,
                        },
                    ),
                    None => self.users.remove(&user),
                }
                "users"
            }
            Announcement::ListVersion {
                kind,
                owner,
                version,
            } => {
                self.list_versions
                    .put_if_newer((kind, owner), Versioned { version, value: () });
                "lists"
            }
            Announcement::DropCounts { user } => {
                self.counts.remove(&user);
                "counts"
            }
            Announcement::DropSet { user } => {
                self.sets.remove(user);
                "sets"
            }
            Announcement::DropUser { user } => {
                self.users.remove(&user);
                "users"
            }
            Announcement::DropStatus { follower, followee } => {
                self.status.remove(&(follower, followee));
                "status"
            }
            Announcement::DropListVersion { kind, owner } => {
                self.list_versions.remove(&(kind, owner));
                "lists"
            }
            Announcement::Heartbeat { .. } => return,
        };
        ::metrics::counter!(CACHE_INVALIDATIONS, "kind" => kind).increment(1);
    }

    fn set_l1_live(&self, live: bool) {
        // Emptied on both edges: going down it may miss announcements, coming up it may have missed some.
        self.sets.clear();
        self.status.clear();
        self.counts.clear();
        self.users.clear();
        self.list_versions.clear();
        self.l1_live.store(live, Ordering::SeqCst);
    }
}

/// How often this instance checks that its own announcements come back.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Heartbeats between two flushes of the active viewers to Redis.
const ACTIVE_FLUSH_TICKS: u64 = 5;

/// Subscribes to the invalidation channel and applies every announcement, until `shutdown`.
///
/// On a Redis Cluster it subscribes on one node at a time (each seed in turn after a failure): a PUBLISH
/// on any node of a cluster reaches the subscribers of every node.
pub async fn run(caches: Caches, redis: RedisTarget, mut shutdown: watch::Receiver<bool>) {
    if !caches.settings.enabled {
        return;
    }
    let instance = uuid::Uuid::new_v4().simple().to_string();
    let mut backoff = Duration::from_millis(100);
    let nodes = redis.node_urls();
    let mut attempt = 0usize;
    while !*shutdown.borrow() {
        let node = &nodes[attempt % nodes.len().max(1)];
        attempt += 1;
        let session = subscribe_once(&caches, node, &instance);
        tokio::select! {
            outcome = session => {
                if let Err(err) = outcome {
                    tracing::warn!(error = %format!("{err:#}"), "cache invalidation subscription lost; L1 suspended");
                }
            }
            _ = shutdown.changed() => break,
        }
        caches.set_l1_live(false);
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {},
            _ = shutdown.changed() => break,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
    caches.set_l1_live(false);
}

/// One subscription: returns when it fails or its heartbeat stops coming back.
async fn subscribe_once(caches: &Caches, redis_url: &str, instance: &str) -> anyhow::Result<()> {
    let client = redis::Client::open(redis_url)?;
    let mut pubsub =
        tokio::time::timeout(Duration::from_secs(2), client.get_async_pubsub()).await??;
    let channel = caches.names.channel();
    tokio::time::timeout(Duration::from_secs(2), pubsub.subscribe(&channel)).await??;
    let mut publisher = tokio::time::timeout(
        Duration::from_secs(2),
        client.get_multiplexed_async_connection(),
    )
    .await??;
    // Redis is back for us: repair what the outage left in L2 before L1 is used again.
    let since = Instant::now();
    while !caches.l2_available() {
        caches.probe().await;
        if since.elapsed() > Duration::from_secs(10) {
            anyhow::bail!("Redis answers the subscription but not the cache");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    caches.set_l1_live(true);
    tracing::info!(%channel, "subscribed to cache invalidations; L1 active");
    let mut messages = pubsub.into_on_message();
    let mut ticker = tokio::time::interval(HEARTBEAT);
    let (mut sent, mut received, mut last_seen) = (0u64, 0u64, Instant::now());
    loop {
        tokio::select! {
            message = messages.next() => {
                let Some(message) = message else { anyhow::bail!("the subscription ended") };
                let payload: String = message.get_payload()?;
                if sent_by(&payload, &caches.origin) {
                    continue;
                }
                for line in payload.lines().filter(|line| !line.starts_with(ORIGIN)) {
                    match Announcement::decode(line) {
                        Some(Announcement::Heartbeat { instance: from, beat }) if from == instance => {
                            received = received.max(beat);
                            last_seen = Instant::now();
                        }
                        Some(announcement) => caches.apply(announcement),
                        None => tracing::debug!(line, "unknown cache announcement ignored"),
                    }
                }
            }
            _ = ticker.tick() => {
                caches.probe().await;
                if sent % ACTIVE_FLUSH_TICKS == 0 {
                    caches.flush_active().await;
                }
                if sent > received + 2 && last_seen.elapsed() > HEARTBEAT * 3 {
                    anyhow::bail!("own heartbeats stopped coming back");
                }
                sent += 1;
                let beat = Announcement::Heartbeat { instance: instance.to_owned(), beat: sent }.encode();
                let mut publish = redis::cmd("PUBLISH");
                publish.arg(&channel).arg(beat);
                if tokio::time::timeout(Duration::from_secs(1), publish.query_async::<i64>(&mut publisher)).await.is_err() {
                    tracing::debug!("heartbeat publish timed out");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_names_its_origin_and_only_the_origin_skips_it() {
        let status = Announcement::Status {
            follower: 1,
            followee: 2,
            version: 3,
            follows: true,
        };
        let sent = from_origin("a1", std::slice::from_ref(&status));
        assert!(sent_by(&sent, "a1"));
        assert!(!sent_by(&sent, "b2"));
        assert!(!sent_by(&message(std::slice::from_ref(&status)), "a1"));
        let lines: Vec<_> = sent
            .lines()
            .filter(|line| !line.starts_with(ORIGIN))
            .filter_map(Announcement::decode)
            .collect();
        assert_eq!(
            lines,
            vec![status],
            "the other instances still read every change"
        );
    }

    #[test]
    fn announcements_survive_their_encoding() {
        let all = [
            Announcement::Status {
                follower: 1,
                followee: 2,
                version: 30,
                follows: true,
            },
            Announcement::Counts {
                user: 3,
                version: 4,
                followers: 5,
                following: 6,
            },
            Announcement::User {
                user: 7,
                version: 8,
                payload: r#"{"display_name":"A B"}"#.to_owned(),
            },
            Announcement::ListVersion {
                kind: crate::db::follows::ListKind::Following,
                owner: 9,
                version: 10,
            },
            Announcement::DropCounts { user: 11 },
            Announcement::DropSet { user: 13 },
            Announcement::DropUser { user: 14 },
            Announcement::DropStatus {
                follower: 15,
                followee: 16,
            },
            Announcement::DropListVersion {
                kind: crate::db::follows::ListKind::Followers,
                owner: 17,
            },
            Announcement::Heartbeat {
                instance: "abc".to_owned(),
                beat: 12,
            },
        ];
        let decoded: Vec<_> = message(&all)
            .lines()
            .filter_map(Announcement::decode)
            .collect();
        assert_eq!(decoded, all);
    }
}
