//! Pipelines on a Redis Cluster: split by slot, in order where order matters.
//!
//! A cluster node refuses a pipeline whose keys live in several slots, and the cache's pipelines span
//! users (one hash tag per user). [`SlotRouter`] sends the keyed commands of a pipeline as one
//! sub-pipeline per slot, concurrently, so commands on one key keep their order. A command without a
//! key (PUBLISH, SCRIPT LOAD, PING) or whose keys span slots (MGET, DEL of many users) is a barrier:
//! everything before it completes first, it runs alone (the cluster client routes it, splitting a
//! multi-key command by slot), and what follows waits for it. So a write is in Redis before the
//! announcement that follows it, and a script is loaded before it is called.
//!
//! A sub-pipeline answered with MOVED or ASK (a slot that moved during a resharding) is sent again one
//! command at a time, through the cluster client's own redirection handling, which also refreshes its
//! slot map.

use std::collections::HashMap;

use futures::future::try_join_all;

use super::redis::{
    self, Cmd, RedisFuture, RedisResult, ServerErrorKind, Value,
    aio::ConnectionLike,
    cluster_async::ClusterConnection,
    cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr},
};

/// Runs pipelines on a cluster connection, split by slot (see the module doc).
pub struct SlotRouter {
    conn: ClusterConnection,
}

/// Where one command of a pipeline goes.
#[derive(Debug, PartialEq, Eq)]
enum Placement {
    /// Every key in one slot: with the other commands of that slot.
    Slot(Route),
    /// No key, or keys in several slots: alone, between barriers.
    Alone,
}

impl SlotRouter {
    pub fn new(conn: ClusterConnection) -> Self {
        Self { conn }
    }

    /// Runs `cmds` and answers one value per command, in their order.
    async fn run(&mut self, cmds: &[&Cmd]) -> RedisResult<Vec<Value>> {
        let mut values = vec![Value::Nil; cmds.len()];
        let mut groups: Vec<(Route, Vec<usize>)> = Vec::new();
        let mut index = 0;
        while index < cmds.len() {
            match placement(cmds[index]) {
                Placement::Slot(route) => match groups.iter_mut().find(|(r, _)| *r == route) {
                    Some((_, indices)) => indices.push(index),
                    None => groups.push((route, vec![index])),
                },
                Placement::Alone => {
                    self.flush(cmds, &mut groups, &mut values).await?;
                    // Scripts loaded together commute: one round trip for the run of them.
                    let run = if is_script_load(cmds[index]) {
                        cmds[index..]
                            .iter()
                            .take_while(|cmd| is_script_load(cmd))
                            .count()
                    } else {
                        1
                    };
                    let sends = cmds[index..index + run].iter().map(|cmd| {
                        let mut conn = self.conn.clone();
                        async move { conn.req_packed_command(cmd).await }
                    });
                    for (offset, answer) in try_join_all(sends).await?.into_iter().enumerate() {
                        values[index + offset] = answer;
                    }
                    index += run;
                    continue;
                }
            }
            index += 1;
        }
        self.flush(cmds, &mut groups, &mut values).await?;
        Ok(values)
    }

    /// Sends the gathered sub-pipelines, one per slot, concurrently, and places their answers.
    async fn flush(
        &self,
        cmds: &[&Cmd],
        groups: &mut Vec<(Route, Vec<usize>)>,
        values: &mut [Value],
    ) -> RedisResult<()> {
        let sends = groups.drain(..).map(|(route, indices)| {
            let mut conn = self.conn.clone();
            let mut sub = redis::pipe();
            for &index in &indices {
                sub.add_command(cmds[index].clone());
            }
            async move {
                let count = indices.len();
                let target = SingleNodeRoutingInfo::SpecificNode(route);
                let mut answers = conn.route_pipeline(sub, 0, count, target).await?;
                if answers.iter().any(is_redirection) {
                    // The slot moved: one command at a time, which the client redirects.
                    for (answer, &index) in answers.iter_mut().zip(&indices) {
                        *answer = conn.req_packed_command(cmds[index]).await?;
                    }
                }
                Ok::<_, redis::RedisError>((indices, answers))
            }
        });
        for (indices, answers) in try_join_all(sends).await? {
            for (index, answer) in indices.into_iter().zip(answers) {
                values[index] = answer;
            }
        }
        Ok(())
    }
}

/// Whether an answer is a redirection (the slot is served elsewhere now).
fn is_redirection(value: &Value) -> bool {
    matches!(value, Value::ServerError(err)
        if matches!(err.kind(), Some(ServerErrorKind::Moved | ServerErrorKind::Ask)))
}

impl ConnectionLike for SlotRouter {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        self.conn.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            if pipeline.is_transaction() {
                // MULTI/EXEC needs one slot and one node; nothing here sends one.
                return self.conn.req_packed_commands(pipeline, offset, count).await;
            }
            let cmds: Vec<&Cmd> = pipeline.cmd_iter().skip(offset).take(count).collect();
            self.run(&cmds).await
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}

/// Whether `cmd` is `SCRIPT LOAD` (sent to every node; loads of different scripts commute).
fn is_script_load(cmd: &Cmd) -> bool {
    let args = args(cmd);
    args.len() >= 2
        && args[0].eq_ignore_ascii_case(b"SCRIPT")
        && args[1].eq_ignore_ascii_case(b"LOAD")
}

/// The command's name and arguments as bytes.
fn args(cmd: &Cmd) -> Vec<&[u8]> {
    cmd.args_iter()
        .filter_map(|arg| match arg {
            redis::Arg::Simple(bytes) => Some(bytes),
            _ => None,
        })
        .collect()
}

/// The keys of the commands this service sends (see the module doc): the positions Redis's command
/// table gives them. A command not listed here takes its first argument as its one key.
fn keys<'a>(args: &[&'a [u8]]) -> Option<Vec<&'a [u8]>> {
    let name = args.first()?.to_ascii_uppercase();
    let rest = &args[1..];
    match name.as_slice() {
        b"PUBLISH" | b"SPUBLISH" | b"PING" | b"SCRIPT" | b"INFO" | b"TIME" | b"ECHO"
        | b"CLUSTER" | b"CLIENT" | b"CONFIG" | b"DBSIZE" | b"FLUSHALL" | b"FLUSHDB" | b"SCAN"
        | b"KEYS" | b"MULTI" | b"EXEC" => None,
        b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" | b"FCALL" | b"FCALL_RO" => {
            let count: usize = std::str::from_utf8(rest.get(1)?).ok()?.parse().ok()?;
            (count > 0).then(|| rest.iter().skip(2).take(count).copied().collect())
        }
        b"MGET" | b"DEL" | b"UNLINK" | b"EXISTS" | b"TOUCH" => Some(rest.to_vec()),
        b"XGROUP" | b"XINFO" => Some(vec![*rest.get(1)?]),
        b"XREAD" | b"XREADGROUP" => {
            let streams = rest
                .iter()
                .position(|arg| arg.eq_ignore_ascii_case(b"STREAMS"))?;
            let named = &rest[streams + 1..];
            Some(named[..named.len() / 2].to_vec())
        }
        _ => Some(vec![*rest.first()?]),
    }
}

/// Where `cmd` goes: the slot of its keys, or alone when it has none or they span slots.
fn placement(cmd: &Cmd) -> Placement {
    let args = args(cmd);
    let Some(keys) = keys(&args) else {
        return Placement::Alone;
    };
    let mut routes = keys
        .iter()
        .map(|key| Route::with_key(key, SlotAddr::Master));
    let Some(first) = routes.next() else {
        return Placement::Alone;
    };
    if routes.all(|route| route == first) {
        Placement::Slot(first)
    } else {
        Placement::Alone
    }
}

/// Groups keys by hash slot, keeping their order within each slot: for a script that may take keys of
/// one slot only.
pub fn by_slot<K: AsRef<[u8]>>(keys: &[K]) -> Vec<Vec<usize>> {
    let mut slots: HashMap<Route, usize> = HashMap::new();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (index, key) in keys.iter().enumerate() {
        let route = Route::with_key(key, SlotAddr::Master);
        let group = *slots.entry(route).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[group].push(index);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(key: &str) -> Placement {
        Placement::Slot(Route::with_key(key, SlotAddr::Master))
    }

    #[test]
    fn keyed_commands_go_to_their_key_slot() {
        let mut set = redis::cmd("SET");
        set.arg("p:{7}:a").arg("v");
        assert_eq!(placement(&set), route("{7}"));

        let mut script = redis::cmd("EVALSHA");
        script
            .arg("abc")
            .arg(2)
            .arg("p:st:{7}:1")
            .arg("p:fs:{7}")
            .arg("x");
        assert_eq!(placement(&script), route("{7}"));

        let mut group = redis::cmd("XGROUP");
        group.arg("CREATE").arg("s:{events}").arg("g").arg("$");
        assert_eq!(placement(&group), route("{events}"));
    }

    #[test]
    fn keyless_or_cross_slot_commands_run_alone() {
        let mut publish = redis::cmd("PUBLISH");
        publish.arg("channel").arg("message");
        assert_eq!(placement(&publish), Placement::Alone);

        let mut load = redis::cmd("SCRIPT");
        load.arg("LOAD").arg("return 1");
        assert_eq!(placement(&load), Placement::Alone);

        let mut mget = redis::cmd("MGET");
        mget.arg("a:{1}").arg("a:{2}");
        assert_eq!(placement(&mget), Placement::Alone);

        let mut same = redis::cmd("MGET");
        same.arg("a:{1}").arg("b:{1}");
        assert_eq!(placement(&same), route("{1}"));
    }

    #[test]
    fn keys_group_by_slot_in_order() {
        let keys = ["a:{1}", "a:{2}", "b:{1}", "c:{3}", "c:{2}"];
        let groups = by_slot(&keys);
        assert_eq!(groups, vec![vec![0, 2], vec![1, 4], vec![3]]);
    }
}
