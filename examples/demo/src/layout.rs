//! Which loopback port does what: everything hangs off one base port, so a
//! user who has something on 17000 moves the whole demo with `--base-port`.

use std::net::TcpListener;

use anyhow::bail;

/// One sidecar's ports.
#[derive(Clone, Copy)]
pub struct Sidecar {
    pub app: u16,
    pub ingress: u16,
    pub egress: u16,
    pub admin: u16,
}

pub struct Layout {
    /// The virtual gateway's listener: where users send requests.
    pub gateway: u16,
    pub gateway_admin: u16,
    /// The gateway proxy's App Mesh ingress and egress ports: unused by a
    /// gateway, but its bootstrap names them, so they must be free too.
    pub gateway_unused: (u16, u16),
    pub api: u16,
    pub xds: u16,
    pub frontend: Sidecar,
    pub backend_v1: Sidecar,
    pub backend_v2: Sidecar,
}

impl Layout {
    pub fn new(base: u16) -> anyhow::Result<Layout> {
        if base > u16::MAX - 100 {
            bail!("--base-port {base}: the demo needs the 100 ports above it");
        }
        let sidecar = |i: u16| Sidecar {
            app: base + 10 + i,
            ingress: base + 20 + 2 * i,
            egress: base + 21 + 2 * i,
            admin: base + 91 + i,
        };
        Ok(Layout {
            gateway: base,
            gateway_admin: base + 90,
            gateway_unused: (base + 80, base + 81),
            api: base + 1,
            xds: base + 2,
            frontend: sidecar(0),
            backend_v1: sidecar(1),
            backend_v2: sidecar(2),
        })
    }

    /// Every port the demo binds.
    fn all(&self) -> Vec<u16> {
        let mut ports = vec![
            self.gateway,
            self.gateway_admin,
            self.gateway_unused.0,
            self.gateway_unused.1,
            self.api,
            self.xds,
        ];
        for s in [self.frontend, self.backend_v1, self.backend_v2] {
            ports.extend([s.app, s.ingress, s.egress, s.admin]);
        }
        ports
    }

    /// Fails naming the first port something else already holds.
    pub fn check_free(&self) -> anyhow::Result<()> {
        for port in self.all() {
            if TcpListener::bind(("127.0.0.1", port)).is_err() {
                bail!(
                    "port 127.0.0.1:{port} is in use; pick other ports with --base-port \
                     (the demo uses BASE..BASE+99)"
                );
            }
        }
        Ok(())
    }
}
