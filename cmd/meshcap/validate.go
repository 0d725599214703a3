package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/meshcap/meshcap/pkg/capture"
	"github.com/meshcap/meshcap/pkg/validation"
)

// runValidation is `meshcap init --run-validation`: istio-validation's check (pkg/validation) against the capture
// flags, exit code 126 when it fails, as istio-cni expects.
func runValidation(ctx context.Context, log *zap.Logger, cfg capture.Config, ex capture.ExecOptions) error {
	cfg.ResolveDefaults()
	pol, err := cfg.Policy()
	if err != nil {
		return err
	}
	probe, err := strconv.ParseUint(ex.ProbePort, 10, 16)
	if err != nil || probe == 0 {
		return fmt.Errorf("invalid --iptables-probe-port %q: want a port 1-65535", ex.ProbePort)
	}
	timeout, err := time.ParseDuration(ex.ProbeTimeout)
	if err != nil || timeout <= 0 {
		return fmt.Errorf("invalid --probe-timeout %q: want a positive duration such as 5s", ex.ProbeTimeout)
	}
	res, err := validation.Run(ctx, log, validation.Config{
		OutboundPort: pol.ProxyPort, InboundPort: pol.InboundCapturePort, ProbePort: uint16(probe), Timeout: timeout,
	})
	if errors.Is(err, validation.ErrFailed) {
		return withExitCode(validation.ExitCode, err)
	}
	if err != nil {
		return err
	}
	log.Info("validation passed", zap.String("probe", res.Probe), zap.Uint16("redirectedTo", res.Listener))
	return nil
}

// initValidate runs init without validation unless --skip-rule-apply, then the validation.
func initValidate(ctx context.Context, log *zap.Logger, apply func(capture.ExecOptions) error, cfg capture.Config, ex capture.ExecOptions) error {
	if !ex.SkipRuleApply {
		plain := ex
		plain.RunValidation = false
		if err := apply(plain); err != nil {
			return err
		}
	}
	return runValidation(ctx, log, cfg, ex)
}
