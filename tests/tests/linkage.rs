//! The host<->guest linkage, end to end: a guest cluster fences a lost
//! peer through its host daemon. Real daemons in namespaces: a host
//! cluster of three `host-clusterd` (libvirt test driver) and a guest
//! cluster of three `guest-clusterd`, whose VMs `vm-n0`..`vm-n2` run on
//! host n0. Needs root.

use std::time::{Duration, Instant};

use cluster_core::status::LinkageStatus;
use testbed::cluster::{Cluster, Spec, test_host_xml};
use testbed::write_key;

fn ok<T>(r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e:#}"))
}

/// The host cluster `hosts`: `groups` (TOML), the guests `n0`..`n2` of
/// guest cluster `test` linked with the key `{dir}/guests.key` (domains
/// `vm-n0`..), each host listening on `{dir}/linkage-{node}.sock`, and
/// `node_extra` for every host.
fn host_spec(groups: &str, node_extra: &str) -> Spec {
    let mut extra = format!("{groups}[linkage]\n\n");
    for g in 0..3 {
        extra.push_str(&format!(
            "[[linkage.guests]]\nname = \"n{g}\"\ndomain = \"vm-n{g}\"\ncluster = \"test\"\n\
             key_file = \"{{dir}}/guests.key\"\n\n"
        ));
    }
    Spec {
        name: "hosts",
        host: true,
        extra,
        node_extra: format!(
            "linkage_listen = [\"unix:{{dir}}/linkage-{{node}}.sock\"]\n{node_extra}"
        ),
        ..Spec::default()
    }
}

/// The host cluster of [`host_spec`] without groups, where host `k` runs
/// the VMs `vms[k]`.
fn hosts(vms: [&'static [&'static str]; 3]) -> Cluster {
    ok(Cluster::start_with(&host_spec("", ""), |dir| {
        for (k, domains) in vms.iter().enumerate() {
            let _ = std::fs::write(dir.join(format!("n{k}.xml")), test_host_xml(domains));
        }
        // Every guest of this test runs from one configuration, so they
        // share a key file; each guest's own key in the field.
        write_key(&dir.join("guests.key"));
    }))
}

/// The guest cluster `test`, fencing through the host daemon at `socket`
/// (`{node}`: the guest's name) with the key in `key`; group `app` prefers
/// n0, then n1.
fn guests(socket: &str, key: &std::path::Path) -> Cluster {
    let extra = format!(
        "[[fencing]]\nname = \"via-host\"\nkind = \"host\"\ntargets = [\"n0\", \"n1\", \"n2\"]\n\
         timeout = \"5s\"\n\n\
         [[groups]]\nname = \"app\"\nnodes = [\"n0\", \"n1\"]\nfailback = \"manual\"\n\n\
         [linkage]\nconnect = \"unix:/nonexistent\"\nkey_file = \"{}\"\n",
        key.display()
    );
    ok(Cluster::start(&Spec {
        extra,
        node_extra: format!("linkage_connect = \"unix:{socket}\""),
        ..Spec::default()
    }))
}

#[test]
fn a_guest_cluster_fences_a_lost_peer_through_its_host_daemon() {
    let h = hosts([&["vm-n0", "vm-n1", "vm-n2"], &[], &[]]);
    ok(h.wait_converged(Duration::from_secs(10)));
    let mut g = guests(
        &h.dir().join("linkage-n0.sock").display().to_string(),
        &h.dir().join("guests.key"),
    );
    ok(g.wait_converged(Duration::from_secs(10)));

    // Every guest has a session, and knows it runs on host n0.
    testbed::wait_until(
        "every guest connected to host n0",
        Duration::from_secs(10),
        || {
            (0..3).all(|k| {
                g.status(k).ok().and_then(|s| s.linkage).is_some_and(|l| {
                    matches!(l, LinkageStatus::Guest { connected: true, host: Some(ref h), .. } if h == "n0")
                })
            })
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}: {:?}\n{}\n{}",
            g.status(0).ok().and_then(|s| s.linkage),
            g.log(0),
            h.log(0)
        )
    });
    // And `clusterctl status` says so on both sides.
    let text = |c: &Cluster, k: usize| {
        let out = testbed::run(
            "clusterctl",
            &["status", "--socket", &c.socket(k).display().to_string()],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let guest_text = text(&g, 1);
    assert!(
        guest_text.contains("connected; this guest runs on host n0"),
        "{guest_text}"
    );
    let host_text = text(&h, 0);
    assert!(
        host_text.contains("Linkage (listening on unix:")
            && host_text.contains("vm-n1")
            && host_text.contains("connected, heard"),
        "{host_text}"
    );
    let host_view = ok(h.status(0)).linkage;
    match &host_view {
        Some(LinkageStatus::Host { guests, .. }) => {
            assert_eq!(guests.len(), 3);
            assert!(guests.iter().all(|s| s.connected), "{guests:?}");
        }
        other => panic!("{other:?}"),
    }
    ok(testbed::wait_until(
        "app running on n0",
        Duration::from_secs(10),
        || {
            g.status(0).ok().is_some_and(|s| {
                s.groups
                    .iter()
                    .any(|gr| gr.name == "app" && gr.owner.as_deref() == Some("n0"))
            })
        },
    ));

    // Guest n0's daemon dies: its peers fence it through host n0, which
    // destroys vm-n0; only then does n1 take `app` over.
    let killed = cluster_core::events::now_ms();
    let t0 = Instant::now();
    g.kill(0);
    let fenced = ok(
        g.wait_event(1, "fence_succeeded", Duration::from_secs(10), |e| {
            e["peer"] == "n0"
        }),
    );
    let took = t0.elapsed();
    assert_eq!(fenced["device"], "via-host", "{fenced}");
    assert_eq!(h.vm_state(0, "vm-n0").as_deref(), Some("shutoff"));
    assert_eq!(h.vm_state(0, "vm-n1").as_deref(), Some("running"));
    let done = ok(
        h.wait_event(0, "guest_fence_succeeded", Duration::from_secs(2), |e| {
            e["peer"] == "n0"
        }),
    );
    assert_eq!(done["domain"], "vm-n0");
    let running = ok(
        g.wait_event(1, "group_running", Duration::from_secs(10), |e| {
            e["group"] == "app" && e["ts_ms"].as_u64() >= Some(killed)
        }),
    );
    let allowed = g
        .events(1)
        .iter()
        .find(|e| e["kind"] == "takeover_allowed" && e["peer"] == "n0")
        .and_then(|e| e["ts_ms"].as_u64());
    assert!(
        allowed.is_some() && running["ts_ms"].as_u64() >= allowed,
        "app ran on n1 before n0 was fenced"
    );
    eprintln!(
        "guest daemon killed to fence confirmed through the host: {} ms; app running on n1 {} ms after the kill",
        took.as_millis(),
        running["ts_ms"]
            .as_u64()
            .unwrap_or(killed)
            .saturating_sub(killed)
    );

    // The host sees n0's session gone, n1 and n2 still there.
    ok(testbed::wait_until(
        "host n0 to see guest n0's session end",
        Duration::from_secs(10),
        || match h.status(0).ok().and_then(|s| s.linkage) {
            Some(LinkageStatus::Host { guests, .. }) => {
                guests.iter().map(|s| s.connected).collect::<Vec<_>>() == [false, true, true]
            }
            _ => false,
        },
    ));
}

#[test]
fn a_fence_of_a_vm_on_another_host_is_forwarded_to_it() {
    // Guest nK runs on host nK and talks to it; guest n0 dies, guest n1
    // asks its host n1, which does not have vm-n0 (and, as it is not a
    // `vm` resource, cannot know where it runs): it asks the other live
    // hosts, and host n0 destroys it.
    let h = hosts([&["vm-n0"], &["vm-n1"], &["vm-n2"]]);
    ok(h.wait_converged(Duration::from_secs(10)));
    let mut g = guests(
        &format!("{}/linkage-{{node}}.sock", h.dir().display()),
        &h.dir().join("guests.key"),
    );
    ok(g.wait_converged(Duration::from_secs(10)));
    testbed::wait_until("every guest connected to its host", Duration::from_secs(10), || {
        (0..3).all(|k| {
            g.status(k).ok().and_then(|s| s.linkage).is_some_and(|l| {
                matches!(l, LinkageStatus::Guest { connected: true, host: Some(ref h), .. } if *h == format!("n{k}"))
            })
        })
    })
    .unwrap_or_else(|e| panic!("{e:#}: {:?}", g.status(1).ok().and_then(|s| s.linkage)));

    let t0 = Instant::now();
    g.kill(0);
    let fenced = g
        .wait_event(1, "fence_succeeded", Duration::from_secs(10), |e| {
            e["peer"] == "n0"
        })
        .unwrap_or_else(|e| panic!("{e:#}\n{}\n{}", h.log(1), h.log(0)));
    let took = t0.elapsed();
    assert_eq!(fenced["device"], "via-host", "{fenced}");
    assert_eq!(h.vm_state(0, "vm-n0").as_deref(), Some("shutoff"));
    assert_eq!(h.vm_state(1, "vm-n1").as_deref(), Some("running"));
    let forwarded = ok(
        h.wait_event(1, "guest_fence_forwarded", Duration::from_secs(2), |e| {
            e["peer"] == "n0"
        }),
    );
    assert_eq!(forwarded["confirmed_by"], "n0", "{forwarded}");
    let done = ok(
        h.wait_event(0, "guest_fence_succeeded", Duration::from_secs(2), |e| {
            e["peer"] == "n0"
        }),
    );
    assert_eq!(done["requester"], "n1");
    eprintln!(
        "guest daemon killed to fence confirmed by another host (forwarded): {} ms",
        took.as_millis()
    );
}

/// Run `ip ARGS`, failing the test on an error.
fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("ip: {e}"));
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_host_uplink_down_moves_the_guest_s_application_to_a_guest_on_another_host() {
    // Each host has a bridge `vmbr0` whose only uplink is `up0` (a veth);
    // vm-n0's interface, on host n0's vmbr0, is guest n0's eth0 (same
    // MAC). Guest n0 runs `app`, whose `nic` monitor watches eth0: the
    // guest's own link stays up, only the host sees its uplink fail.
    const MAC: &str = "52:54:00:aa:00:00";
    let spec = host_spec("", "uplinks = { vmbr0 = [\"up0\"] }");
    let h = ok(Cluster::start_with_net(&spec, |dir, net| {
        for k in 0..3 {
            let ns = net.ns(k);
            ip(&["-n", &ns, "link", "add", "vmbr0", "type", "bridge"]);
            ip(&[
                "-n", &ns, "link", "add", "up0", "type", "veth", "peer", "name", "up0p",
            ]);
            ip(&["-n", &ns, "link", "set", "up0", "master", "vmbr0", "up"]);
            ip(&["-n", &ns, "link", "set", "up0p", "up"]);
            ip(&["-n", &ns, "link", "set", "vmbr0", "up"]);
            let xml = if k == 0 {
                test_host_xml(&[]).replace(
                    "</node>",
                    &format!(
                        "  <domain type='test'><name>vm-n0</name><memory>524288</memory><vcpu>1</vcpu>\
                         <os><type>hvm</type></os><devices><interface type='bridge'>\
                         <mac address='{MAC}'/><source bridge='vmbr0'/></interface></devices></domain>\n</node>"
                    ),
                )
            } else {
                test_host_xml(&[&format!("vm-n{k}")])
            };
            std::fs::write(dir.join(format!("n{k}.xml")), xml)?;
        }
        write_key(&dir.join("guests.key"));
        Ok(())
    }));
    ok(h.wait_converged(Duration::from_secs(10)));
    let socket = format!("{}/linkage-{{node}}.sock", h.dir().display());
    let key = h.dir().join("guests.key");
    let g = ok(Cluster::start_with_net(
        &Spec {
            extra: format!(
                "[[groups]]\nname = \"app\"\nnodes = [\"n0\", \"n1\"]\nfailback = \"manual\"\n\n\
                 [[groups.monitors]]\nname = \"lan\"\nkind = \"nic\"\ninterface = \"eth0\"\n\
                 interval = \"200ms\"\ntimeout = \"1s\"\nrecovery = {{ restart = 0, failover = 1 }}\n\n\
                 [linkage]\nconnect = \"unix:/nonexistent\"\nkey_file = \"{}\"\n",
                key.display()
            ),
            node_extra: format!("linkage_connect = \"unix:{socket}\""),
            ..Spec::default()
        },
        |_, net| {
            ip(&["-n", &net.ns(0), "link", "set", "eth0", "address", MAC]);
            Ok(())
        },
    ));
    ok(g.wait_converged(Duration::from_secs(10)));
    let owner = |c: &Cluster| {
        c.status(1)
            .ok()
            .and_then(|s| s.groups.into_iter().find(|gr| gr.name == "app"))
            .and_then(|gr| gr.owner)
    };
    ok(testbed::wait_until(
        "app running on n0",
        Duration::from_secs(10),
        || owner(&g).as_deref() == Some("n0"),
    ));
    ok(testbed::wait_until(
        "guest n0 connected to host n0",
        Duration::from_secs(10),
        || {
            g.status(0).ok().and_then(|s| s.linkage).is_some_and(|l| {
            matches!(l, LinkageStatus::Guest { connected: true, host: Some(ref h), .. } if h == "n0")
        })
        },
    ));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        owner(&g).as_deref(),
        Some("n0"),
        "app moved with the uplink up"
    );

    // Host n0's uplink fails.
    let cut = cluster_core::events::now_ms();
    let t0 = Instant::now();
    ip(&["-n", &h.net.ns(0), "link", "set", "up0", "down"]);
    let running = g
        .wait_event(1, "group_running", Duration::from_secs(10), |e| {
            e["group"] == "app" && e["ts_ms"].as_u64() >= Some(cut)
        })
        .unwrap_or_else(|e| panic!("{e:#}\n{}\n{}", g.log(0), h.log(0)));
    let took = t0.elapsed();
    let failed = ok(
        g.wait_event(0, "monitor_failed", Duration::from_secs(1), |e| {
            e["group"] == "app" && e["ts_ms"].as_u64() >= Some(cut)
        }),
    );
    let detail = failed["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("uplink") && detail.contains("vmbr0") && detail.contains(MAC),
        "{failed}"
    );
    assert_eq!(owner(&g).as_deref(), Some("n1"));
    eprintln!(
        "host uplink down to app running on a guest of another host: {} ms (monitor failed {} ms); the monitor said: {detail}",
        took.as_millis(),
        failed["ts_ms"].as_u64().unwrap_or(cut).saturating_sub(cut),
    );
    let _ = running;

    // Back up: guest n0's monitor passes again (n0 is eligible), and the
    // application stays on n1 (fail-back is manual).
    ip(&["-n", &h.net.ns(0), "link", "set", "up0", "up"]);
    ok(testbed::wait_until(
        "guest n0 told its uplink is back",
        Duration::from_secs(5),
        || g.log(0).contains("back up"),
    ));
    assert_eq!(owner(&g).as_deref(), Some("n1"));
}

#[test]
fn a_host_in_maintenance_has_its_guests_hand_their_applications_over_then_shuts_them_down() {
    // Guest nK runs on host nK. Host n0 also runs the host cluster's VM
    // `db` (a `vm` resource preferring n0). `clusterctl maintenance on` on
    // host n0: guest n0 hands `app` over to guest n1 and says it is ready,
    // then host n0 goes into maintenance (`db` moves to n1), then vm-n0
    // is shut down.
    let db = "[[groups]]\nname = \"db\"\nnodes = [\"n0\", \"n1\"]\n\n\
              [[groups.resources]]\nname = \"db\"\nkind = \"vm\"\ndomain_xml = \"{dir}/db.xml\"\n\n";
    let h = ok(Cluster::start_with(&host_spec(db, ""), |dir| {
        for k in 0..3 {
            let _ = std::fs::write(
                dir.join(format!("n{k}.xml")),
                test_host_xml(&[&format!("vm-n{k}")]),
            );
        }
        let _ = std::fs::write(
            dir.join("db.xml"),
            testbed::cluster::test_domain_xml("db", 512, 1),
        );
        write_key(&dir.join("guests.key"));
    }));
    ok(h.wait_converged(Duration::from_secs(10)));
    let g = guests(
        &format!("{}/linkage-{{node}}.sock", h.dir().display()),
        &h.dir().join("guests.key"),
    );
    ok(g.wait_converged(Duration::from_secs(10)));
    let owner = |c: &Cluster, group: &str| {
        c.status(1)
            .ok()
            .and_then(|s| s.groups.into_iter().find(|gr| gr.name == group))
            .and_then(|gr| gr.owner)
    };
    ok(testbed::wait_until(
        "app on n0 and db on n0",
        Duration::from_secs(10),
        || owner(&g, "app").as_deref() == Some("n0") && owner(&h, "db").as_deref() == Some("n0"),
    ));
    ok(testbed::wait_until(
        "guest n0 connected",
        Duration::from_secs(10),
        || {
            g.status(0).ok().and_then(|s| s.linkage).is_some_and(|l| {
                matches!(
                    l,
                    LinkageStatus::Guest {
                        connected: true,
                        ..
                    }
                )
            })
        },
    ));

    let t0 = Instant::now();
    let socket = h.socket(0).display().to_string();
    let out = testbed::run(
        "clusterctl",
        &["maintenance", "on", "--timeout", "30s", "--socket", &socket],
    );
    let took = t0.elapsed();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}\n{}\n{}", h.log(0), g.log(0));
    assert!(
        text.contains("guest n0 (domain vm-n0): handed its groups over in")
            && text.contains("guest VM vm-n0 shut down in")
            && text.contains("in maintenance: nothing of the cluster runs on this node"),
        "{text}"
    );
    // The application runs on a guest of another host; the host's own VM
    // moved; the guest's VM is off.
    assert_eq!(owner(&g, "app").as_deref(), Some("n1"));
    assert_eq!(owner(&h, "db").as_deref(), Some("n1"));
    assert_eq!(h.vm_state(0, "vm-n0").as_deref(), Some("shutoff"));
    assert_eq!(h.vm_state(1, "vm-n1").as_deref(), Some("running"));
    // The guest handed over before its VM went down: it stopped `app`
    // itself (a clean stop, not a fence).
    assert!(
        g.events(1)
            .iter()
            .all(|e| e["kind"] != "fence_succeeded" || e["peer"] != "n0"),
        "guest n0 was fenced"
    );
    eprintln!(
        "clusterctl maintenance on (host with a guest and a VM of its own): {} ms\n{text}",
        took.as_millis()
    );

    let out = testbed::run("clusterctl", &["maintenance", "off", "--socket", &socket]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_guest_whose_host_was_lost_is_off_once_that_host_is_fenced() {
    // Guest n0 runs on host n0, guest n1 on host n2, guest n2 on host n1.
    // Host n0 loses power: its daemon and guest n0 (its VM) die together.
    // Guest n1 (the guests' coordinator) asks its host n2 to fence n0;
    // vm-n0 is on no live host (n2 finds it absent, n1 says so too), and
    // host n0 is powered off for certain once the host cluster fenced it
    // with a device, which host n1, the hosts' coordinator, tells n2 in
    // its answer: off.
    const ON_HOST: [usize; 3] = [0, 2, 1];
    let mut h = ok(Cluster::start_with(
        &host_spec(&testbed::fence::config(3), ""),
        |dir| {
            testbed::fence::install(dir);
            for (guest, host) in ON_HOST.iter().enumerate() {
                let _ = std::fs::write(
                    dir.join(format!("n{host}.xml")),
                    test_host_xml(&[&format!("vm-n{guest}")]),
                );
            }
            write_key(&dir.join("guests.key"));
        },
    ));
    testbed::fence::arm(&h);
    ok(h.wait_converged(Duration::from_secs(10)));
    // Guest nK reaches its host through `guest-nK.sock`.
    for (guest, host) in ON_HOST.iter().enumerate() {
        ok(std::os::unix::fs::symlink(
            h.dir().join(format!("linkage-n{host}.sock")),
            h.dir().join(format!("guest-n{guest}.sock")),
        )
        .map_err(anyhow::Error::from));
    }
    let mut g = guests(
        &format!("{}/guest-{{node}}.sock", h.dir().display()),
        &h.dir().join("guests.key"),
    );
    ok(g.wait_converged(Duration::from_secs(10)));
    ok(testbed::wait_until(
        "every guest connected",
        Duration::from_secs(10),
        || {
            (0..3).all(|k| {
                g.status(k).ok().and_then(|s| s.linkage).is_some_and(|l| {
                    matches!(
                        l,
                        LinkageStatus::Guest {
                            connected: true,
                            ..
                        }
                    )
                })
            })
        },
    ));

    let t0 = Instant::now();
    h.kill(0);
    g.kill(0);
    let fenced = g
        .wait_event(1, "fence_succeeded", Duration::from_secs(20), |e| {
            e["peer"] == "n0"
        })
        .unwrap_or_else(|e| panic!("{e:#}\n{}\n{}", g.log(1), h.log(1)));
    let took = t0.elapsed();
    assert_eq!(fenced["device"], "via-host", "{fenced}");
    assert_eq!(testbed::fence::fenced(h.dir()), ["n0"]);
    // Decided by host n2, which does not coordinate the hosts.
    let forwarded = ok(
        h.wait_event(2, "guest_fence_forwarded", Duration::from_secs(2), |e| {
            e["peer"] == "n0" && e["down"].is_array()
        }),
    );
    assert_eq!(forwarded["down"], serde_json::json!(["n0"]), "{forwarded}");
    // Before host n0 was fenced, the guest's fence was refused (retried).
    let host_fenced = h
        .events(1)
        .iter()
        .chain(h.events(2).iter())
        .filter(|e| e["kind"] == "takeover_allowed" && e["peer"] == "n0")
        .filter_map(|e| e["ts_ms"].as_u64())
        .min();
    assert!(
        host_fenced.is_some() && fenced["ts_ms"].as_u64() >= host_fenced,
        "the guest was declared off before its host was fenced"
    );
    eprintln!(
        "host n0 and its guest killed to the guest confirmed off: {} ms",
        took.as_millis()
    );
}
