namespace MLNetPeft.Training;

/// <summary>Linear warm-up from 0 to the peak rate, then cosine decay to the minimum rate at the last step (nanoGPT's schedule).</summary>
public sealed record LearningRateSchedule(double PeakRate, int WarmupSteps, int TotalSteps, double MinimumRate)
{
    /// <summary>The rate of (zero-based) <paramref name="step"/>.</summary>
    public double At(int step)
    {
        if (step < WarmupSteps) return PeakRate * (step + 1) / WarmupSteps;
        if (step >= TotalSteps) return MinimumRate;
        double progress = (double)(step - WarmupSteps) / Math.Max(1, TotalSteps - WarmupSteps);
        return MinimumRate + 0.5 * (1 + Math.Cos(Math.PI * progress)) * (PeakRate - MinimumRate);
    }
}
