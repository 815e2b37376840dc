package engine

import (
	"os"

	"github.com/hashicorp/go-hclog"
	"github.com/openbao/openbao/sdk/v2/plugin"
)

// Serve runs a plugin process of kind "secret" or "auth": plugin.ServeMultiplex when
// multiplexed (one process serves every mount of the catalog entry), else plugin.Serve.
// Returns the process's exit status.
func Serve(kind, version string, multiplexed bool) int {
	logger := hclog.New(&hclog.LoggerOptions{Level: hclog.Trace, Output: os.Stderr, JSONFormat: true})
	logger.Info(Describe(kind, version, multiplexed), "plugin_version", version, "pid", os.Getpid())
	opts := &plugin.ServeOpts{BackendFactoryFunc: Factory(kind, version, multiplexed), Logger: logger}
	serve := plugin.Serve
	if multiplexed {
		serve = plugin.ServeMultiplex
	}
	if err := serve(opts); err != nil {
		logger.Error("plugin shutting down", "error", err)
		return 1
	}
	return 0
}
