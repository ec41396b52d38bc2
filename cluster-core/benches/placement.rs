//! Placement speed: 1,000 groups over 32 nodes, with priorities,
//! dependencies, anti-affinity and capacity, after a node loss.
//! `cargo bench -p cluster-core --bench placement`. Prints numbers; the
//! target is <= 10 ms per placement (and its actions).

use std::time::{Duration, Instant};

use cluster_core::placement::{
    Demand, Facts, GroupFacts, GroupSpec, NodeState, RunState, Topology, actions, place,
};

fn topology(nodes: usize, groups: usize) -> Topology {
    let mut t = Topology {
        nodes: (0..nodes).map(|k| format!("n{k}")).collect(),
        capacity: vec![
            Some(Demand {
                memory_mib: 256 * 1024,
                vcpus: 128
            });
            nodes
        ],
        groups: (0..groups)
            .map(|g| GroupSpec {
                name: format!("g{g}"),
                // Each group prefers its own node, then the next three.
                nodes: (0..4).map(|i| (g + i * 7) % nodes).collect(),
                failback_auto: g % 2 == 0,
                // Every tenth group depends on the one before it.
                start_after: if g % 10 == 9 { vec![g - 1] } else { Vec::new() },
                // Pairs keep apart.
                anti_affinity: if g % 2 == 1 { vec![g - 1] } else { Vec::new() },
                demand: Demand {
                    memory_mib: 4096,
                    vcpus: 2,
                },
            })
            .collect(),
        order: Vec::new(),
        dependents: Vec::new(),
    };
    // Symmetric anti-affinity, as Topology::from_config makes it.
    for g in (1..groups).step_by(2) {
        t.groups[g - 1].anti_affinity.push(g);
    }
    t.reindex();
    t
}

fn facts(t: &Topology, lost: usize) -> Facts {
    let mut nodes = vec![NodeState::Up; t.nodes.len()];
    nodes[lost] = NodeState::Down;
    Facts {
        nodes,
        groups: t
            .groups
            .iter()
            .map(|g| {
                let n = g.nodes[0];
                GroupFacts {
                    wanted: true,
                    runs: vec![(n, RunState::Running)],
                    assigned: Some(n),
                    ..GroupFacts::default()
                }
            })
            .collect(),
    }
}

fn main() {
    let (nodes, groups) = (32, 1000);
    let t = topology(nodes, groups);
    let f = facts(&t, 3);
    let mut samples: Vec<Duration> = Vec::new();
    let mut moved = 0;
    for _ in 0..200 {
        let start = Instant::now();
        let p = place(&t, &f);
        let a = actions(&t, &f, &p);
        samples.push(start.elapsed());
        moved = a.len();
    }
    samples.sort();
    let pct = |q: f64| samples[((samples.len() as f64 - 1.0) * q) as usize];
    println!(
        "placement of {groups} groups over {nodes} nodes after a node loss ({moved} actions): median {:.2} ms, p99 {:.2} ms, max {:.2} ms (target <= 10 ms)",
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        samples.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
    );
}
