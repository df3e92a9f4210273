//! The shared limiter: one Lua script applies a check to all its buckets in Redis, atomically.

use std::sync::LazyLock;

use anyhow::Context;

use super::gcra::{Cell, Outcome};
use crate::redis_pool::{RedisPool, redis};

/// `KEYS[i]`: a bucket, holding its TAT in µs of Redis's clock. `ARGV[2i-1]`: the increment (µs) this
/// check adds to it, 0 to spend nothing; `ARGV[2i]`: its period (µs), how far the TAT may run ahead.
/// Spends on every bucket or on none ([`super::gcra::admits`] is the same rule), and each spent bucket
/// expires when it would be whole again. Returns `{spent (1|0), debt_1, …, debt_n}`, each debt being
/// TAT − now after the check.
///
/// `TIME` before a write is allowed because Redis 7 replicates a script's effects, not the script.
/// The TAT is written through `%.0f`: Redis versions differ in how they print a Lua number, and a
/// 16-digit one must not come back rounded.
const GCRA_LUA: &str = r"
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local debts = {}
local spent = 1
for i = 1, #KEYS do
  local tat = tonumber(redis.call('GET', KEYS[i])) or now
  local debt = math.max(tat - now, 0)
  local increment = tonumber(ARGV[2 * i - 1])
  if increment > 0 and debt + increment > tonumber(ARGV[2 * i]) then
    spent = 0
  end
  debts[i] = debt
end
if spent == 1 then
  for i = 1, #KEYS do
    local increment = tonumber(ARGV[2 * i - 1])
    if increment > 0 then
      debts[i] = debts[i] + increment
      redis.call('SET', KEYS[i], string.format('%.0f', now + debts[i]),
        'PX', string.format('%.0f', math.ceil(debts[i] / 1000)))
    end
  end
end
return {spent, unpack(debts)}
";

/// Called by its hash; Redis forgets scripts when it restarts, and then the text goes once more.
static GCRA: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(GCRA_LUA));

/// Runs one check against the buckets `keys` (with their `cells`) in Redis.
pub(super) async fn check(
    pool: &RedisPool,
    keys: &[String],
    cells: &[Cell],
) -> anyhow::Result<Outcome> {
    let call = |command: &str, body: &str| {
        let mut cmd = redis::cmd(command);
        cmd.arg(body).arg(keys.len()).arg(keys);
        for cell in cells {
            cmd.arg(cell.increment).arg(cell.tau);
        }
        cmd
    };
    let reply: Vec<i64> = match pool.query_cmd(&call("EVALSHA", GCRA.get_hash())).await {
        Err(err) if is_no_script(&err) => pool.query_cmd(&call("EVAL", GCRA_LUA)).await?,
        other => other?,
    };
    let (&spent, debts) = reply
        .split_first()
        .context("the rate limit script answered nothing")?;
    anyhow::ensure!(
        debts.len() == keys.len(),
        "the rate limit script answered {} debts for {} buckets",
        debts.len(),
        keys.len()
    );
    Ok(Outcome {
        spent: spent == 1,
        debts: debts
            .iter()
            .map(|&d| u64::try_from(d).unwrap_or(0))
            .collect(),
    })
}

fn is_no_script(err: &anyhow::Error) -> bool {
    err.downcast_ref::<redis::RedisError>()
        .is_some_and(|e| e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript))
}
