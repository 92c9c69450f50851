//! The profiles `skein-load run` knows: the cluster, the load, the simulated providers and
//! their limits, the faults, and what each checks or measures.

/// One simulated provider: its name (as Skein's provider table has it), the MX host its
/// domains point at, and its limits per source IP (0: none).
pub(crate) struct SimSpec {
    pub(crate) name: &'static str,
    pub(crate) mx: &'static str,
    pub(crate) hourly: u64,
    pub(crate) conns: u32,
    /// Greylists first contacts.
    pub(crate) greylist: bool,
    /// Milliseconds before the reply to a final dot.
    pub(crate) slow_ms: u64,
}

/// A profile's settings.
pub(crate) struct Profile {
    pub(crate) nodes: usize,
    pub(crate) source_ips: usize,
    pub(crate) messages: u64,
    pub(crate) rate: f64,
    pub(crate) sessions: usize,
    /// Message sizes and their weights.
    pub(crate) sizes: &'static [(usize, u32)],
    /// Recipients per message and their weights.
    pub(crate) rcpts: &'static [(usize, u32)],
    pub(crate) sims: Vec<SimSpec>,
    /// Recipient domains: (domain, weight, index of the simulator its MX is).
    pub(crate) dests: Vec<(&'static str, u32, usize)>,
    /// Faults, as `--faults` takes them.
    pub(crate) faults: &'static str,
    /// Share of recipients that fail once (`tempfail-`), and of those that bounce
    /// (`permfail-`), each.
    pub(crate) failures: f64,
    /// Tenants whose sessions log in (STARTTLS + AUTH); the other sessions relay by address.
    pub(crate) tenants: &'static [&'static str],
    /// Fail the run when a process's memory or descriptors keep growing.
    pub(crate) leak_check: bool,
    /// How long finished mail is kept (real seconds): the queue's data levels off after it.
    pub(crate) keep_finished_s: f64,
    /// Measure the highest sustained rate (the load as fast as it is answered), then the
    /// accept latency at half of it, then Postfix relaying the same load.
    pub(crate) measure_max: bool,
    /// Virtual seconds the load spans (scaled time: the cluster's clocks and the
    /// simulators' hours run that much faster); `None`: real time.
    pub(crate) virtual_span_s: Option<f64>,
    /// The source IPs start warming up by this schedule (day, daily cap) instead of warm.
    pub(crate) warmup: Option<&'static [(u32, u64)]>,
}

fn sims(gmail: u64, yahoo: u64, outlook: u64, conns: u32) -> Vec<SimSpec> {
    vec![
        SimSpec {
            name: "gmail",
            mx: "gmail-smtp-in.l.google.com",
            hourly: gmail,
            conns,
            greylist: false,
            slow_ms: 0,
        },
        SimSpec {
            name: "yahoo",
            mx: "mta5.am0.yahoodns.net",
            hourly: yahoo,
            conns,
            greylist: false,
            slow_ms: 0,
        },
        SimSpec {
            name: "outlook",
            mx: "outlook-com.olc.protection.outlook.com",
            hourly: outlook,
            conns,
            greylist: false,
            // Slow to answer the final dot.
            slow_ms: 50,
        },
        SimSpec {
            name: "default",
            mx: "mx.custom.test",
            hourly: 0,
            conns: 0,
            // Small providers greylist first contacts.
            greylist: true,
            slow_ms: 0,
        },
    ]
}

/// Message sizes as a sending service sees them: mostly small notifications, some with
/// images, a few with attachments (8 KB on average).
const MIXED_SIZES: &[(usize, u32)] = &[(2048, 55), (5120, 30), (20_480, 12), (102_400, 3)];

/// Recipients per message: mostly one, some to a few (1.3 on average).
const MIXED_RCPTS: &[(usize, u32)] = &[(1, 85), (2, 10), (5, 5)];

/// The max profile's message size (Postfix relays the same).
pub(crate) const MAX_SIZE: usize = 5120;
/// The max-large profile's message size.
pub(crate) const MAX_LARGE_SIZE: usize = 102_400;

/// A `max` profile: `messages` of one size (`sizes`) as fast as 20 sessions are answered,
/// each to one recipient, no limits, no failures, relayed by address as Postfix is by
/// smtp-source.
fn max(messages: u64, sizes: &'static [(usize, u32)]) -> Profile {
    Profile {
        nodes: 3,
        source_ips: 4,
        messages,
        rate: 0.0,
        sessions: 20,
        sizes,
        rcpts: &[(1, 1)],
        sims: sims(0, 0, 0, 0)
            .into_iter()
            .map(|s| SimSpec {
                greylist: false,
                slow_ms: 0,
                ..s
            })
            .collect(),
        dests: DESTS.to_vec(),
        faults: "none",
        failures: 0.0,
        tenants: &[],
        leak_check: false,
        keep_finished_s: 3600.0,
        measure_max: true,
        virtual_span_s: None,
        warmup: None,
    }
}

/// Where the generator's mail goes: the providers' own domains, a custom domain hosted at
/// Google (known by its MX only), and custom domains.
const DESTS: [(&str, u32, usize); 5] = [
    ("gmail.com", 30, 0),
    ("brand.test", 10, 0),
    ("yahoo.com", 15, 1),
    ("outlook.com", 15, 2),
    ("custom.test", 30, 3),
];

pub(crate) fn profile(name: &str) -> anyhow::Result<Profile> {
    match name {
        "quick" => Ok(Profile {
            nodes: 3,
            source_ips: 4,
            messages: 800,
            rate: 50.0,
            sessions: 10,
            sizes: MIXED_SIZES,
            rcpts: MIXED_RCPTS,
            sims: sims(120, 60, 60, 10),
            dests: DESTS.to_vec(),
            faults: "link@0.1,leader@0.3,sender@0.55,edge@0.8",
            failures: 0.03,
            tenants: &["acme", "globex"],
            leak_check: false,
            keep_finished_s: 3600.0,
            measure_max: false,
            virtual_span_s: None,
            warmup: None,
        }),
        // A million messages over a 24-hour day (scaled time), through 16 warm IPs within
        // per-provider hourly limits, the leader killed half-way and the sender later.
        "day" => Ok(Profile {
            nodes: 3,
            source_ips: 16,
            messages: 1_000_000,
            rate: 400.0,
            sessions: 40,
            sizes: MIXED_SIZES,
            rcpts: MIXED_RCPTS,
            sims: sims(1_500, 1_000, 1_000, 20),
            dests: DESTS.to_vec(),
            faults: "leader@0.5,sender@0.75",
            failures: 0.03,
            tenants: &["acme", "globex"],
            leak_check: false,
            // Five minutes of finished mail kept (14 virtual hours): a million messages
            // would otherwise fill tens of gigabytes on each node.
            keep_finished_s: 300.0,
            measure_max: false,
            virtual_span_s: Some(86_400.0),
            warmup: None,
        }),
        // A new pool of two IPs warming up over 25 days under demand far above what the
        // schedule allows: every IP's daily sends must stay under the curve; mail past it
        // waits, and what waits past the maximum age (5 days) bounces. Five more days of
        // drain let the last of it deliver or expire.
        "warmup" => Ok(Profile {
            nodes: 3,
            source_ips: 2,
            messages: 20_000,
            rate: 80.0,
            sessions: 10,
            sizes: &[(2048, 1)],
            rcpts: &[(1, 1)],
            sims: sims(0, 0, 0, 20),
            dests: DESTS.to_vec(),
            faults: "none",
            failures: 0.03,
            tenants: &["acme", "globex"],
            leak_check: false,
            keep_finished_s: 3600.0,
            measure_max: false,
            virtual_span_s: Some(25.0 * 86_400.0),
            warmup: Some(&[(1, 20), (3, 40), (7, 80), (14, 160), (21, 320)]),
        }),
        // The highest sustained rate: 5 KB messages as fast as 20 sessions are answered, no
        // limits, no failures; then half that rate for the accept latency; then Postfix.
        "max" => Ok(max(20_000, &[(MAX_SIZE, 1)])),
        // The same with 100 KB messages (5,000 of them): where replication's copies cost.
        "max-large" => Ok(max(5_000, &[(MAX_LARGE_SIZE, 1)])),
        // Two hours at a steady 400 messages/s (half of what a debug build sustains here),
        // a fault every five minutes (the leader, the sender, the edge, a follower in turn):
        // nothing may be lost, and no process's memory or descriptors may keep growing.
        // Limits (told to Skein, enforced by the simulators) sized to let the load through
        // in real time: each of 8 IPs may send 200,000 an hour to each provider and a
        // million a day (Skein's own defaults would hold most of it back).
        "soak" => Ok(Profile {
            nodes: 3,
            source_ips: 8,
            messages: 400 * 7_200,
            rate: 400.0,
            sessions: 40,
            sizes: MIXED_SIZES,
            rcpts: MIXED_RCPTS,
            sims: sims(200_000, 200_000, 200_000, 40)
                .into_iter()
                .map(|s| SimSpec {
                    hourly: 200_000,
                    conns: 40,
                    ..s
                })
                .collect(),
            dests: DESTS.to_vec(),
            faults: "every:300",
            failures: 0.03,
            tenants: &["acme", "globex"],
            leak_check: true,
            // Finished mail is kept 5 minutes, so the data levels off early in the run.
            keep_finished_s: 300.0,
            measure_max: false,
            virtual_span_s: None,
            warmup: Some(&[(1, 1_000_000)]),
        }),
        other => {
            anyhow::bail!("no profile {other:?} (quick, day, warmup, max, max-large, soak)")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Weighted mean of `(value, weight)` pairs.
    fn mean(mix: &[(usize, u32)]) -> f64 {
        let total: u32 = mix.iter().map(|(_, w)| w).sum();
        mix.iter()
            .map(|(v, w)| *v as f64 * f64::from(*w))
            .sum::<f64>()
            / f64::from(total)
    }

    /// The profiles that must deliver everything they accept as it comes (all but `warmup`,
    /// whose point is demand above the curve): the limits they set let their load through,
    /// per provider per (virtual) hour over the pool, and per IP per day. The first soak
    /// told Skein no limits and was held back by Skein's own defaults from its fifth minute.
    #[test]
    fn the_limits_a_profile_sets_let_its_load_through() {
        for name in ["quick", "day", "soak"] {
            let p = profile(name).unwrap();
            let rcpts = p.messages as f64 * mean(p.rcpts);
            // Recipients in the busiest (virtual) hour and in the busiest day.
            let (hour, day) = match p.virtual_span_s {
                Some(span) => (rcpts * 3600.0 / span, rcpts * 86_400.0 / span),
                None => (p.rate * 3600.0 * mean(p.rcpts), rcpts),
            };
            let (hour, day) = (hour.min(rcpts), day.min(rcpts));
            let weights: u32 = p.dests.iter().map(|d| d.1).sum();
            for (i, sim) in p.sims.iter().enumerate() {
                let share: u32 = p.dests.iter().filter(|d| d.2 == i).map(|d| d.1).sum();
                let demand = hour * f64::from(share) / f64::from(weights);
                assert!(
                    sim.hourly > 0 || name != "soak",
                    "{name}: {} has no limit told to Skein, whose defaults then apply",
                    sim.name
                );
                let capacity = (sim.hourly * p.source_ips as u64) as f64;
                assert!(
                    sim.hourly == 0 || capacity >= demand,
                    "{name}: {} takes {capacity} an hour from the pool, the load sends {demand:.0}",
                    sim.name
                );
            }
            if let Some(steps) = p.warmup {
                let cap = steps.last().unwrap().1 as f64;
                assert!(
                    cap * p.source_ips as f64 >= day,
                    "{name}: the pool sends {} a day, the load {day:.0}",
                    cap * p.source_ips as f64
                );
            }
        }
    }

    /// Both max profiles measure one size at full speed, without faults or failures, so the
    /// Postfix run beside them relays exactly their load.
    #[test]
    fn the_max_profiles_send_one_size_as_fast_as_answered() {
        for (name, size, messages) in [("max", 5120, 20_000), ("max-large", 102_400, 5_000)] {
            let p = profile(name).unwrap();
            assert_eq!(p.sizes, &[(size, 1)], "{name}");
            assert_eq!(p.messages, messages, "{name}");
            assert!(
                p.measure_max && p.rate == 0.0 && p.failures == 0.0,
                "{name}"
            );
            assert_eq!(p.faults, "none", "{name}");
        }
        assert!(profile("max-huge").is_err());
    }
}
