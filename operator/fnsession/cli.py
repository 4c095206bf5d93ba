"""The ``fnsession`` command line.

Subcommands are added as the parts they drive land; each one lives in its own function that parses
nothing itself, so ``--help`` stays the single description of the command line.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from collections.abc import Sequence

from fnsession import __version__

API_GROUP = "fnsession.dev"
API_VERSION = "v1alpha1"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fnsession",
        description=(
            "Function sessions on Kubernetes: sticky, time-bounded sessions bound to function "
            "instance pods, with an Alibaba Cloud Function Compute compatible session API."
        ),
        epilog=(
            "examples:\n"
            "  fnsession --version\n"
            "  fnsession version --verbose\n"
            "  fnsession operator --liveness none     # run the operator against the current kubeconfig\n"
            "\n"
            "Docs and the local cluster: see README.md (make cluster-up, make images, make test)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"fnsession {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    version = sub.add_parser("version", help="print the version (and, with --verbose, the API and runtime)")
    version.add_argument("--verbose", "-v", action="store_true", help="also print API group/version and Python")
    version.set_defaults(func=cmd_version)

    op = sub.add_parser("operator", help="run the operator (in the cluster, or against the current kubeconfig)",
                        description="Run the fnsession operator: binds FunctionSessions to instance pods of their "
                                    "Function, scales instances, expires and fences sessions. Needs the CRDs "
                                    "(make deploy) and RBAC as in manifests/.")
    op.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", metavar="URL",
                    help="where to serve the liveness probe (default: %(default)s); 'none' to disable")
    op.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    op.set_defaults(func=cmd_operator)

    gw = sub.add_parser("gateway", help="serve FC's session API over FunctionSession objects",
                        description="Serve Alibaba Cloud Function Compute's session API (CreateSession, GetSession, "
                                    "ListSessions, UpdateSession, DeleteSession) at FC's paths, backed by "
                                    "FunctionSession objects. FC's official SDKs work against it unchanged.")
    gw.add_argument("--host", default="0.0.0.0", help="address to listen on (default: %(default)s)")
    gw.add_argument("--port", type=int, default=8080, help="port to listen on (default: %(default)s)")
    gw.add_argument("--auth", choices=["kubernetes", "none"], required=True,
                    help="'kubernetes': bearer tokens (TokenReview) and FC access keys (Secrets), then RBAC "
                         "(SubjectAccessReview on functionsessions); 'none': nobody is checked, local development only")
    gw.add_argument("--namespace", default="default",
                    help="namespace of callers that are not a ServiceAccount and send no x-fnsession-namespace header")
    gw.add_argument("--keys-namespace", default="fnsession-system",
                    help="where access-key Secrets live (default: %(default)s)")
    gw.add_argument("--metrics-port", type=int, default=9091,
                    help="serve Prometheus metrics on this port at /metrics (worker i: this port + i); 0 turns them off "
                         "(default: %(default)s)")
    gw.add_argument("--workers", default=os.environ.get("FNSESSION_GATEWAY_WORKERS", "1"), metavar="N|auto",
                    help="processes sharing the port (SO_REUSEPORT); 'auto': the CPUs the pod may use (its CPU limit, "
                         "else its CPU affinity) (default: $FNSESSION_GATEWAY_WORKERS, else 1)")
    gw.add_argument("--replicas", type=int, default=int(os.environ.get("FNSESSION_GATEWAY_REPLICAS", "1")),
                    help="gateway replicas routing to the same instances: each process takes at most "
                         "200 // (workers x replicas) requests in flight per instance (default: "
                         "$FNSESSION_GATEWAY_REPLICAS, else 1)")
    gw.add_argument("--drain-delay", type=float, default=5.0, metavar="SECONDS",
                    help="on SIGTERM: seconds to keep serving, not ready, every answer with Connection: close, "
                         "before the port closes (default: %(default)s)")
    gw.add_argument("--drain-timeout", type=float, default=20.0, metavar="SECONDS",
                    help="then: seconds in-flight requests get to finish before their connections are cut "
                         "(default: %(default)s)")
    gw.add_argument("--peer-port", type=int, default=0, metavar="PORT",
                    help="with several replicas: the port on which gateway pods ask each other whether a signed "
                         "request's nonce was used (a round trip on the pod network instead of an API write per "
                         "signed request); the other pods are found from --peer-service's EndpointSlices in "
                         "--keys-namespace. 0: replicas claim every nonce in the API server (default: %(default)s)")
    gw.add_argument("--peer-service", default="fnsession-gateway",
                    help="the gateway's Service, whose endpoints are the other gateway pods (default: %(default)s)")
    gw.add_argument("--peer-token-file", default="/var/run/secrets/fnsession/peers/token", metavar="PATH",
                    help="this pod's ServiceAccount token projected for the audience fnsession-gateway-peers: it "
                         "proves to the other pods on --peer-port that this is a gateway pod, and they only answer "
                         "one that runs as the same ServiceAccount (a TokenReview) (default: %(default)s)")
    dp = gw.add_argument_group("data plane timeouts and limits",
                               "each answered with FC's error object (408, 503, 504) and the connection closed")
    dp.add_argument("--request-head-timeout", type=float, default=10.0, metavar="SECONDS",
                    help="from a request's first byte to the end of its head (default: %(default)s)")
    dp.add_argument("--request-body-timeout", type=float, default=30.0, metavar="SECONDS",
                    help="between two reads of a request body (default: %(default)s)")
    dp.add_argument("--answer-timeout", type=float, default=300.0, metavar="SECONDS",
                    help="from a request sent to its instance to the answer's head (default: %(default)s)")
    dp.add_argument("--stream-idle-timeout", type=float, default=300.0, metavar="SECONDS",
                    help="between two reads of an answer being streamed; a stream that keeps sending is never "
                         "cut (default: %(default)s)")
    dp.add_argument("--client-idle-timeout", type=float, default=75.0, metavar="SECONDS",
                    help="a kept-alive client connection with no request (default: %(default)s)")
    dp.add_argument("--max-connections", type=int, default=10000,
                    help="client connections at once; one more is answered 503 (default: %(default)s)")
    dp.add_argument("--trusted-proxies", default="", metavar="CIDRS",
                    help="comma-separated networks whose X-Forwarded-For/-Proto/-Host are kept (the peer appended); "
                         "from anyone else they are replaced by the gateway's (default: none)")
    gw.set_defaults(func=cmd_gateway)

    ak = sub.add_parser("access-key", help="FC access keys for the gateway")
    ak_sub = ak.add_subparsers(dest="access_key_command", metavar="COMMAND", required=True)
    akc = ak_sub.add_parser("create", help="mint a key that acts as a ServiceAccount; prints its id and secret",
                            description="Mint an FC access key (for FC's SDKs) that acts as a ServiceAccount: the "
                                        "gateway checks the request's signature with the key's secret, then RBAC of "
                                        "that ServiceAccount decides. The secret is printed once; it is kept in a "
                                        "Secret in --keys-namespace.")
    akc.add_argument("--namespace", required=True, help="the namespace the key acts in (and the ServiceAccount's)")
    akc.add_argument("--service-account", required=True, help="the ServiceAccount the key acts as")
    akc.add_argument("--keys-namespace", default="fnsession-system", help="where the gateway reads keys (default: %(default)s)")
    akc.set_defaults(func=cmd_access_key_create)
    return parser


def cmd_version(args: argparse.Namespace) -> int:
    print(f"fnsession {__version__}")
    if args.verbose:
        print(f"api: {API_GROUP}/{API_VERSION}")
        print(f"python: {platform.python_version()} ({sys.executable})")
    return 0


def cmd_operator(args: argparse.Namespace) -> int:
    from fnsession.controller.app import run

    run(liveness=None if args.liveness == "none" else args.liveness, verbose=args.verbose)
    return 0


def cmd_access_key_create(args: argparse.Namespace) -> int:
    from fnsession import access_keys

    try:
        key_id, secret = access_keys.create(args.namespace, args.service_account, args.keys_namespace)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"accessKeyId: {key_id}")
    print(f"accessKeySecret: {secret}")
    print(f"acts as: system:serviceaccount:{args.namespace}:{args.service_account}")
    return 0


def cmd_gateway(args: argparse.Namespace) -> int:
    from fnsession.gateway.http import Limits
    from fnsession.gateway.server import Options, cpus_available, run

    if args.workers == "auto":
        workers = cpus_available()
    elif args.workers.isdigit() and int(args.workers) >= 1:
        workers = int(args.workers)
    else:
        raise SystemExit(f"--workers must be a whole number from 1 or 'auto', got {args.workers!r}")
    if args.replicas < 1:
        raise SystemExit(f"--replicas must be at least 1, got {args.replicas}")
    if args.peer_port and args.peer_port in (args.port, args.metrics_port):
        raise SystemExit(f"--peer-port must differ from --port and --metrics-port, got {args.peer_port}")
    if not 0 <= args.peer_port <= 65535:
        raise SystemExit(f"--peer-port must be a port number (0: none), got {args.peer_port}")
    try:
        limits = Limits.from_args(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    run(Options(host=args.host, port=args.port, auth=args.auth, namespace=args.namespace,
                keys_namespace=args.keys_namespace, metrics_port=args.metrics_port, workers=workers,
                replicas=args.replicas, drain_delay=args.drain_delay, drain_timeout=args.drain_timeout, limits=limits,
                peer_port=args.peer_port, peer_service=args.peer_service, peer_token_file=args.peer_token_file))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
