//! A TCP proxy the test controls: forwards to a target until `cut`, which
//! drops every open connection and refuses new ones, until `restore`.

use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A proxy in front of one address.
pub struct TcpProxy {
    /// The port clients connect to.
    pub port: u16,
    up: Arc<watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on a free port on 127.0.0.1 and forwards to `target`.
    pub async fn start(target: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy port");
        let port = listener.local_addr().expect("proxy addr").port();
        Self::serve(listener, target, port)
    }

    /// Listens on `port` (chosen by the caller, e.g. before the target
    /// exists) and forwards to `target`.
    pub async fn start_on(port: u16, target: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("proxy port");
        Self::serve(listener, target, port)
    }

    fn serve(listener: TcpListener, target: SocketAddr, port: u16) -> TcpProxy {
        let up = Arc::new(watch::channel(true).0);
        let state = up.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if !*state.borrow() {
                    drop(client); // refused while cut
                    continue;
                }
                let mut cut = state.subscribe();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut client, mut server) = (client, server);
                    // A cut drops both ends mid-conversation.
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        TcpProxy { port, up, task }
    }

    /// Cuts the link: open connections are dropped, new ones refused.
    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    /// Restores the link.
    pub fn restore(&self) {
        self.up.send_replace(true);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
