//go:build goplugin_current

// The methods go-plugin's test service gained after 1.0.1. This file is built only against
// the current go-plugin (module mode, `-tags goplugin_current`; see tests/gopeer/go.mod):
// Debian's 1.0.1 has neither the methods nor their message types.

package main

import (
	"context"
	"os"

	grpctest "github.com/hashicorp/go-plugin/test/grpc"
	"google.golang.org/protobuf/types/known/emptypb"
)

// PrintStdio writes the given bytes to the plugin's stdout and stderr (GRPCStdio carries them).
func (s *testServer) PrintStdio(ctx context.Context, req *grpctest.PrintStdioRequest) (*emptypb.Empty, error) {
	os.Stdout.Write(req.Stdout)
	os.Stderr.Write(req.Stderr)
	return &emptypb.Empty{}, nil
}

// Panic ends the plugin the way a Go plugin bug does.
func (s *testServer) Panic(ctx context.Context, req *grpctest.PanicRequest) (*emptypb.Empty, error) {
	panic(req.Message)
}
