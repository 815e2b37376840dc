// Package baoplugin holds three small but real OpenBao plugins, written for
// vault-plugin-shim's end-to-end tests and demo, on HashiCorp go-plugin 1.0.1
// (Debian) and our own subset of OpenBao's plugin protocols (proto/).
//
// The secrets engine (pb.Backend, type logical) and the auth method (the same
// backend, type credential) serve these paths:
//
//	version      read: version, pid, kind, exe, transport, and storage
//	             ("ok" or the error of one Storage call)
//	kv/<key>     write, read, delete through OpenBao's pb.Storage, which the
//	             plugin reaches by dialling the broker id that Setup names
//	kv/          list
//	login        auth only, unauthenticated; write name=N: a token with policy
//	             "default" and metadata naming N and the version
//
// The database plugin (dbplugin.v5.Database) keeps its "database" in a directory
// (connection parameter "directory"): each user is a JSON file in it.
//
// Every plugin also answers logical.PluginVersion/Version with its version,
// which the build sets (-ldflags "-X main.version=v1.2.3"; OpenBao needs the
// leading v). Logs are hclog JSON on stderr, which OpenBao re-logs at their level.
//
// shim/demo/gobuild.py builds them against a copy of go-plugin 1.0.1 with
// go-plugin 1.4.4's broker TLS fix (RootCAs and ServerName on the plugin's
// AutoMTLS config); without it every Storage call fails under AutoMTLS with
// "certificate is valid for localhost, not unused".
package baoplugin

import (
	"context"
	"os"

	hclog "github.com/hashicorp/go-hclog"
	plugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	"vaultpluginshim/baoplugin/logicalpb"
)

// The magic cookies OpenBao (like Vault) sets for backend and database plugins.
var (
	backendHandshake = plugin.HandshakeConfig{
		ProtocolVersion:  5,
		MagicCookieKey:   "VAULT_BACKEND_PLUGIN",
		MagicCookieValue: "6669da05-b1c8-4f49-97d9-c8e5bed98e20",
	}
	databaseHandshake = plugin.HandshakeConfig{
		ProtocolVersion:  5,
		MagicCookieKey:   "VAULT_DATABASE_PLUGIN",
		MagicCookieValue: "926a0820-aea2-be28-51d6-83cdf00e8edb",
	}
)

func newLogger(kind, version string) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{
		Name:       "baoplugin-" + kind,
		Level:      hclog.Debug,
		Output:     os.Stderr,
		JSONFormat: true,
	}).With("plugin_version", version)
}

// versionServer answers logical.PluginVersion/Version.
type versionServer struct{ version string }

func (v versionServer) Version(context.Context, *logicalpb.Empty) (*logicalpb.VersionReply, error) {
	return &logicalpb.VersionReply{PluginVersion: v.version}, nil
}

// grpcPlugin adapts a registration function to go-plugin's GRPCPlugin.
type grpcPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	register func(*plugin.GRPCBroker, *grpc.Server) error
}

func (p grpcPlugin) GRPCServer(b *plugin.GRPCBroker, s *grpc.Server) error {
	return p.register(b, s)
}

func (p grpcPlugin) GRPCClient(context.Context, *plugin.GRPCBroker, *grpc.ClientConn) (interface{}, error) {
	return nil, nil // plugin side only
}

func serve(hs plugin.HandshakeConfig, name string, logger hclog.Logger,
	register func(*plugin.GRPCBroker, *grpc.Server) error) {
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: hs,
		Plugins:         plugin.PluginSet{name: grpcPlugin{register: register}},
		GRPCServer:      plugin.DefaultGRPCServer,
		Logger:          logger,
	})
}

func transport() string {
	if os.Getenv("PLUGIN_CLIENT_CERT") != "" {
		return "automtls"
	}
	return "plaintext"
}

func executable() string {
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return ""
	}
	return exe
}
