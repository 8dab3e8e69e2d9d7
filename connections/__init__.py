"""App connections to Azure: Microsoft Graph (client secrets) and Azure DevOps, with OAuth."""
