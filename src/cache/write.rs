//! The write path: a write's statuses before it returns, what the event consumer applied, new user
//! records and repaired counts, each into L1, L2 and the announcement to the other instances.

use std::collections::HashSet;

use super::{
    Caches,
    invalidation::{self, Announcement, message},
    keys,
    l1::Versioned,
    l2::{self, Batch, ChangeWrite, RECENT_TTL, VersionedWrite},
};
use crate::{
    db::{follows::ListKind, users::UserRecord},
    domain::{AppliedBatch, Counts, EdgeState, EventId},
};

impl Caches {
    /// After a group commit: the pairs' edges, versioned by their events, into L1 (the follower's
    /// set in place) and L2 and announced to the other instances, before the writes return, with
    /// another part's script (the stream append) in the same round trip. Returns whether the round trip
    /// went through (false, without calling Redis, when the cache is off).
    pub async fn record_statuses(
        &self,
        changes: &[EdgeState],
        rider: Option<&l2::Rider<'_>>,
    ) -> bool {
        if !self.settings.enabled {
            return false;
        }
        if changes.is_empty() && rider.is_none() {
            return true;
        }
        let mut batch = Batch::default();
        let mut announcements = Vec::with_capacity(changes.len());
        for &change in changes {
            self.stage_change(change, &mut batch, &mut announcements);
        }
        let channel = self.names.channel();
        // Every change is in this instance's L1 already: its subscriber skips the message.
        let message = invalidation::from_origin(&self.origin, &announcements);
        let publish = (!announcements.is_empty()).then_some((channel.as_str(), message.as_str()));
        self.l2.write_batch(&batch, publish, rider).await
    }

    /// A follow or unfollow: into L1 now, and queued for L2 and the announcement.
    fn stage_change(
        &self,
        change: EdgeState,
        batch: &mut Batch,
        announcements: &mut Vec<Announcement>,
    ) {
        let (follower, followee) = (change.follower.get(), change.followee.get());
        let (follows, version) = (change.follows, change.version.get());
        self.sets.change(follower, followee, version, follows);
        self.note_status(follower, followee, follows, version, announcements);
        batch.changes.push(ChangeWrite {
            status_key: self.names.status(follower, followee),
            set_key: self.names.following_set(follower),
            recent_key: self.names.recent_changes(follower),
            followee,
            version,
            follows,
            status_ttl: self.settings.status_ttl,
        });
    }

    /// A pair's new status in this instance's L1, and its announcement to the others.
    fn note_status(
        &self,
        follower: i64,
        followee: i64,
        follows: bool,
        version: i64,
        announcements: &mut Vec<Announcement>,
    ) {
        self.status.put_if_newer(
            (follower, followee),
            Versioned {
                version,
                value: follows,
            },
        );
        announcements.push(Announcement::Status {
            follower,
            followee,
            version,
            follows,
        });
    }

    /// After the consumer applied a batch: statuses and counts it applied, and the versions of the lists
    /// it changed, in L1 and L2 and announced. This repairs whatever a write could not update. A change
    /// older than half the recent-changes window is not applied to sets in place (a newer change whose
    /// record expired could be undone): the follower's set is dropped instead, everywhere.
    ///
    /// Events in `recorded` (outbox ids) had their status recorded and announced by the writer's round
    /// trip, together with their append: only their counts and lists are refreshed here.
    pub async fn record_applied(&self, batch: &AppliedBatch, recorded: &HashSet<EventId>) {
        if !self.settings.enabled || (batch.events.is_empty() && batch.counts.is_empty()) {
            return;
        }
        let mut writes = Batch::default();
        let mut announcements = Vec::new();
        let mut dropped = HashSet::new();
        for applied in &batch.events {
            if recorded.contains(&applied.event.id) {
                continue;
            }
            let edge = applied.edge_now();
            if applied.lag_seconds < RECENT_TTL.as_secs_f64() / 2.0 {
                self.stage_change(edge, &mut writes, &mut announcements);
                continue;
            }
            let (follower, followee) = (edge.follower.get(), edge.followee.get());
            let (follows, version) = (edge.follows, edge.version.get());
            self.note_status(follower, followee, follows, version, &mut announcements);
            writes.versioned.push(VersionedWrite {
                key: self.names.status(follower, followee),
                version,
                payload: keys::encode_status(follows).to_owned(),
                ttl: self.settings.status_ttl,
            });
            if dropped.insert(follower) {
                self.sets.remove(follower);
                writes.dropped_sets.push((
                    self.names.following_set(follower),
                    self.names.recent_changes(follower),
                ));
                announcements.push(Announcement::DropSet { user: follower });
            }
        }
        for counts in &batch.counts {
            self.stage_counts(counts, &mut writes, &mut announcements);
        }
        let channel = self.names.channel();
        self.l2
            .write_batch(&writes, Some((&channel, &message(&announcements))), None)
            .await;

        let mut lists: Vec<(ListKind, i64)> = batch
            .events
            .iter()
            .flat_map(|e| {
                [
                    (ListKind::Followers, e.event.followee.get()),
                    (ListKind::Following, e.event.follower.get()),
                ]
            })
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        lists.sort_by_key(|(kind, owner)| (*owner, keys::kind_tag(*kind)));
        let names: Vec<String> = lists
            .iter()
            .map(|(kind, owner)| self.names.list_version(*kind, *owner))
            .collect();
        let announce = |versions: &[i64]| {
            message(
                &lists
                    .iter()
                    .zip(versions)
                    .map(|((kind, owner), version)| Announcement::ListVersion {
                        kind: *kind,
                        owner: *owner,
                        version: *version,
                    })
                    .collect::<Vec<_>>(),
            )
        };
        if let Some(versions) = self.l2.bump_versions(&names, &channel, announce).await {
            for ((kind, owner), version) in lists.iter().zip(versions) {
                self.list_versions
                    .put_if_newer((*kind, *owner), Versioned { version, value: () });
            }
        }
    }

    /// After `upsertUser` (or a stale absence found): the records everywhere, in one round trip.
    pub async fn record_users(&self, users: &[UserRecord]) {
        if !self.settings.enabled || users.is_empty() {
            return;
        }
        let mut writes = Vec::with_capacity(users.len());
        let mut announcements = Vec::with_capacity(users.len());
        for user in users {
            let version = user.updated_at.timestamp_micros();
            self.users.put_if_newer(
                user.id,
                Versioned {
                    version,
                    value: Some(user.clone()),
                },
            );
            let payload = keys::encode_user(Some(user));
            writes.push(VersionedWrite {
                key: self.names.user(user.id),
                version,
                payload: payload.clone(),
                ttl: self.settings.users_ttl,
            });
            announcements.push(Announcement::User {
                user: user.id,
                version,
                payload,
            });
        }
        let channel = self.names.channel();
        let batch = Batch {
            versioned: writes,
            ..Batch::default()
        };
        self.l2
            .write_batch(&batch, Some((&channel, &message(&announcements))), None)
            .await;
    }

    /// Counts as a repair wrote them (`reconcile --fix`), versioned, everywhere: newer than any fill,
    /// so a replica that has not replayed the repair cannot put the old counts back, as it could after
    /// a delete.
    pub async fn record_counts(&self, counts: &[Counts]) {
        if !self.settings.enabled || counts.is_empty() {
            return;
        }
        let mut writes = Batch::default();
        let mut announcements = Vec::with_capacity(counts.len());
        for counts in counts {
            self.stage_counts(counts, &mut writes, &mut announcements);
        }
        let channel = self.names.channel();
        self.l2
            .write_batch(&writes, Some((&channel, &message(&announcements))), None)
            .await;
    }

    /// A user's counts into L1 now, and queued for L2 and the announcement.
    fn stage_counts(
        &self,
        counts: &Counts,
        writes: &mut Batch,
        announcements: &mut Vec<Announcement>,
    ) {
        self.counts.put_if_newer(
            counts.user_id.get(),
            Versioned {
                version: counts.version,
                value: *counts,
            },
        );
        writes.versioned.push(VersionedWrite {
            key: self.names.counts(counts.user_id.get()),
            version: counts.version,
            payload: keys::encode_counts(counts),
            ttl: self.settings.counts_ttl,
        });
        announcements.push(Announcement::Counts {
            user: counts.user_id.get(),
            version: counts.version,
            followers: counts.follower_count,
            following: counts.following_count,
        });
    }
}
