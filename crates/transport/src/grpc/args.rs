//! The `--grpc.*` flags (and the `[grpc]` table of a config file).

use std::net::{IpAddr, SocketAddr};

/// Where gRPC is served. It is always served on the axon's port (multiplexed with HTTP/1.1);
/// `--grpc.port` adds a listener of its own.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcArgs {
    /// Also serve gRPC (only) on this port, on the axon's bind address.
    #[arg(long = "grpc.port")]
    pub port: Option<u16>,
}

impl GrpcArgs {
    /// The address of the separate gRPC listener, if one is asked for: `--grpc.port` on `ip`
    /// (the axon's `--axon.ip`).
    pub fn listen_addr(&self, ip: IpAddr) -> Option<SocketAddr> {
        self.port.map(|port| SocketAddr::new(ip, port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        grpc: GrpcArgs,
    }

    #[test]
    fn the_port_is_optional() {
        let cli = Cli::try_parse_from(["miner"]).expect("no flags");
        assert_eq!(cli.grpc, GrpcArgs::default());
        assert_eq!(cli.grpc.listen_addr([0, 0, 0, 0].into()), None);

        let cli = Cli::try_parse_from(["miner", "--grpc.port", "50051"]).expect("port");
        assert_eq!(cli.grpc.port, Some(50051));
        assert_eq!(
            cli.grpc.listen_addr([127, 0, 0, 1].into()),
            Some(SocketAddr::from(([127, 0, 0, 1], 50051)))
        );
        assert!(Cli::try_parse_from(["miner", "--grpc.port", "70000"]).is_err());
    }

    #[test]
    fn config_files_use_the_flag_names() {
        let args: GrpcArgs = serde_json::from_str(r#"{"port": 9000}"#).expect("port");
        assert_eq!(args.port, Some(9000));
        let args: GrpcArgs = serde_json::from_str("{}").expect("empty");
        assert_eq!(args.port, None);
        assert!(serde_json::from_str::<GrpcArgs>(r#"{"prot": 1}"#).is_err());
    }
}
