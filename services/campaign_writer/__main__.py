from services.campaign_writer.service import main

main()
