// Command database serves memdb's database plugin. Set at build time:
//
//	go build -ldflags "-X main.version=v1.0.0 -X main.multiplex=true"
//
// (multiplex=true: dbplugin.ServeMultiplex, one process for every connection).
package main

import (
	"os"

	"github.com/hashicorp/go-hclog"
	"github.com/openbao/openbao/sdk/v2/database/dbplugin/v5"

	"vaultpluginshim/sdkplugin/memdb"
)

var (
	version   = "v0.0.0"
	multiplex = "false"
)

func main() {
	logger := hclog.New(&hclog.LoggerOptions{Level: hclog.Trace, Output: os.Stderr, JSONFormat: true})
	logger.Info("sdkplugin database " + version + " starting (multiplexed=" + multiplex + ")")
	if multiplex == "true" {
		dbplugin.ServeMultiplex(memdb.New(version))
		return
	}
	db, _ := memdb.New(version)()
	dbplugin.Serve(db.(dbplugin.Database))
}
